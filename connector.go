package unified

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/stdlib"

	"github.com/unifiedsql/unified/internal/topology"
)

// Connector is a [driver.Connector] over every host of a Config. It owns the
// health monitor and the topology snapshot; the logical connections it
// returns route each statement by its mode. It is also an [io.Closer]:
// (*sql.DB).Close closes it, which stops the monitor and closes the probe
// connections. A Connector is safe for concurrent use.
type Connector struct {
	cfg   *Config
	opts  options
	log   *slog.Logger
	seeds []*seed // the DSN's hosts
	drv   *Driver

	// view is the published topology and its nodes; nil until the first
	// election (WithStaticPrimary: fixed at NewConnector).
	view atomic.Pointer[view]
	rr   atomic.Uint64 // round-robin cursor for replicas
	// balance counts the times a replica became eligible: read sessions
	// chosen before it may move (rebalancing, see Conn.readConn).
	balance atomic.Uint64
	// clock is a coarse time (UnixNano) the monitor sets at each of its
	// ticks: statements stamp their start with it at the cost of a load.
	clock atomic.Int64
	// pgxArgs: every node is pgx, so arguments pass through unconverted.
	pgxArgs bool
	// countLoad: the replica policy reads node.inflight (least-loaded);
	// otherwise statements do not count it.
	countLoad bool
	mon       *monitor // nil with WithStaticPrimary
	// batch is the Batch-mode bulkhead: one token per statement or
	// transaction in flight; nil when unified_max_batch_conns is 0.
	batch chan struct{}

	tel     *telemetry
	secrets secrets // passwords WithBeforeConnect set, kept out of errors

	closeOnce sync.Once
	closed    chan struct{}
}

var (
	_ driver.Connector           = (*Connector)(nil)
	_ interface{ Close() error } = (*Connector)(nil)
)

// NewConnector validates cfg and returns a Connector for it. cfg is copied;
// later changes to it have no effect. No connection is opened and no
// goroutine started until the first [Connector.Connect]: an invalid
// configuration or option fails here, before anything runs.
func NewConnector(cfg *Config, opts ...Option) (*Connector, error) {
	if cfg == nil {
		return nil, errors.New("unified: NewConnector: nil config")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	cfg = cfg.Copy()
	c := &Connector{cfg: cfg, opts: o, log: o.logger, closed: make(chan struct{})}
	c.drv = &Driver{connector: c}
	if cfg.MaxBatchConns > 0 {
		c.batch = make(chan struct{}, cfg.MaxBatchConns)
	}

	for _, nc := range cfg.Nodes() {
		c.seeds = append(c.seeds, &seed{NodeConfig: nc, custom: o.nodeConnectors[nc.Name]})
	}
	for name := range o.nodeConnectors {
		if !slices.ContainsFunc(c.seeds, func(sd *seed) bool { return sd.Name == name }) {
			return nil, errNoSuchNode("WithNodeConnector", name, c.seeds)
		}
	}
	c.pgxArgs = len(o.nodeConnectors) == 0
	c.countLoad = cfg.ReplicaPolicy == PolicyLeastLoaded
	for _, sd := range c.seeds {
		if sd.custom != nil {
			if _, ok := sd.custom.Driver().(*stdlib.Driver); !ok {
				c.pgxArgs = false
			}
		}
	}
	if c.tel, err = newTelemetry(c, o); err != nil {
		return nil, err
	}
	if o.static {
		nodes := make([]*node, len(c.seeds))
		primary := -1
		for i, sd := range c.seeds {
			nodes[i] = c.newNode(sd, "")
			if sd.Name == o.staticPrimary {
				primary = i
			}
		}
		if primary < 0 {
			return nil, errNoSuchNode("WithStaticPrimary", o.staticPrimary, c.seeds)
		}
		c.view.Store(staticView(nodes, primary))
	} else {
		c.mon = newMonitor(c)
	}
	return c, nil
}

// Connect returns a new logical connection. It does no I/O: physical
// connections are opened on first need by the statements that use them
// (the pool dials in the background with no statement context, so routing
// here would be guesswork). The first call starts the health monitor.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	if c.mon != nil {
		c.mon.start()
	}
	return &Conn{c: c}, nil
}

func (c *Connector) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// Driver returns a [*Driver] bound to this Connector; [ConnectorOf] uses it.
func (c *Connector) Driver() driver.Driver { return c.drv }

// Close stops the health monitor and closes its probe connections. It is
// idempotent and safe to call concurrently. (*sql.DB).Close calls it after
// closing the pool's logical connections, which close their physical ones.
func (c *Connector) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		for _, n := range c.viewNow().allNodes() {
			for sl := range numSlots {
				n.interruptDials(sl)
			}
		}
		if c.mon != nil {
			c.mon.stop()
		}
		_ = c.tel.close()
	})
	return nil
}

// Config returns a copy of the Connector's configuration.
func (c *Connector) Config() *Config { return c.cfg.Copy() }

// viewNow returns the published view, nil before the first election.
func (c *Connector) viewNow() *view { return c.view.Load() }

// snapshot returns the current topology, nil before the first election.
func (c *Connector) snapshot() *topology.Snapshot {
	if v := c.view.Load(); v != nil {
		return v.s
	}
	return nil
}

// OpenDB returns a *sql.DB over a new Connector for cfg and applies the pool
// settings held in cfg (unified_max_open_conns and friends). Closing the DB
// closes the Connector.
func OpenDB(cfg *Config, opts ...Option) (*sql.DB, error) {
	c, err := NewConnector(cfg, opts...)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(c)
	applyPool(db, c.cfg)
	return db, nil
}

func applyPool(db *sql.DB, cfg *Config) {
	if cfg.MaxOpenConns > 0 {
		db.SetMaxOpenConns(cfg.MaxOpenConns)
	}
	if cfg.MaxIdleConns > 0 {
		db.SetMaxIdleConns(cfg.MaxIdleConns)
	}
	if cfg.ConnMaxLifetime > 0 {
		db.SetConnMaxLifetime(cfg.ConnMaxLifetime)
	}
	if cfg.ConnMaxIdleTime > 0 {
		db.SetConnMaxIdleTime(cfg.ConnMaxIdleTime)
	}
}

// ConnectorOf returns the Connector behind db, for a DB made by sql.Open
// ("unified", ...) or OpenDB; false for any other DB.
func ConnectorOf(db *sql.DB) (*Connector, bool) {
	d, ok := db.Driver().(*Driver)
	if !ok || d.connector == nil {
		return nil, false
	}
	return d.connector, true
}
