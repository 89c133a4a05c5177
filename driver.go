package unified

import (
	"context"
	"database/sql"
	"database/sql/driver"
)

// DriverName is the name the package registers with database/sql.
const DriverName = "unified"

func init() {
	sql.Register(DriverName, &Driver{})
}

// Driver is the database/sql driver registered as "unified". Its zero value
// is the registered driver; the Driver returned by [Connector.Driver] also
// remembers its Connector, which is how [ConnectorOf] finds it.
//
// The name given to sql.Open is either a DSN (see [ParseConfig]) or the name
// of a configuration registered with [Register].
type Driver struct {
	connector *Connector
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

// Open opens one logical connection. database/sql calls it only for drivers
// without OpenConnector; it is here for callers that use the driver
// directly. Each call builds (and leaks the health monitor of) a new
// Connector unless name is registered, so prefer sql.Open or OpenDB.
func (d *Driver) Open(name string) (driver.Conn, error) {
	if d.connector != nil {
		return d.connector.Connect(context.Background())
	}
	c, err := d.OpenConnector(name)
	if err != nil {
		return nil, err
	}
	conn, err := c.Connect(context.Background())
	if err != nil {
		_ = c.(*Connector).Close()
		return nil, err
	}
	conn.(*Conn).ownsConnector = true
	return conn, nil
}

// OpenConnector parses name (a registered name or a DSN) and returns a new
// [*Connector]. database/sql calls it once per sql.Open; the Connector lives
// until the *sql.DB is closed.
func (d *Driver) OpenConnector(name string) (driver.Connector, error) {
	if r, ok := lookupRegistered(name); ok {
		return NewConnector(r.cfg, r.opts...) // NewConnector copies it
	}
	cfg, err := ParseConfig(name)
	if err != nil {
		return nil, err
	}
	return NewConnector(cfg)
}
