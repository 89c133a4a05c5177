package unified

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

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
	nodes []*node
	drv   *Driver

	topo atomic.Pointer[topology.Snapshot]
	rr   atomic.Uint64 // round-robin cursor for replicas
	// pgxArgs: every node is pgx, so arguments pass through unconverted.
	pgxArgs bool
	mon     *monitor // nil with WithStaticPrimary
	// batch is the Batch-mode bulkhead: one token per statement or
	// transaction in flight; nil when unified_max_batch_conns is 0.
	batch chan struct{}

	tel *telemetry

	closeOnce sync.Once
	closed    chan struct{}
}

var (
	_ driver.Connector           = (*Connector)(nil)
	_ interface{ Close() error } = (*Connector)(nil)
)

// node is one host: how to open physical connections to it, and what is
// open or being opened to it, so that the health monitor can interrupt it.
type node struct {
	index int
	name  string
	// rw opens ordinary physical connections.
	rw driver.Connector
	// ro opens connections whose transactions are read-only by default
	// (default_transaction_read_only=on): reads use them, so a write sent
	// in ReadOnly mode fails on a replica and on the primary fallback alike.
	// For a node connector given with WithNodeConnector (custom), ro is rw
	// and read connections are made read-only by a statement at dial.
	ro     driver.Connector
	custom bool
	// connectTimeout is the DSN's connect_timeout (0: none given).
	connectTimeout time.Duration
	// breaker counts this node's connection-class failures (dials,
	// statements, probes); a successful probe closes it.
	breaker *breaker

	mu sync.Mutex // protects following fields
	// conns are the open pgx connections to this node, by slot.
	conns [2]map[*physConn]struct{}
	// dials cancel the dials in progress to this node, by slot.
	dials [2]map[*context.CancelFunc]struct{}
}

func (n *node) track(pc *physConn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns[pc.slot] == nil {
		n.conns[pc.slot] = make(map[*physConn]struct{})
	}
	n.conns[pc.slot][pc] = struct{}{}
}

func (n *node) untrack(pc *physConn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.conns[pc.slot], pc)
}

// dialing registers the cancel of a dial in progress for slot sl; the
// returned stop unregisters it.
func (n *node) dialing(sl slot, cancel context.CancelFunc) (stop func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dials[sl] == nil {
		n.dials[sl] = make(map[*context.CancelFunc]struct{})
	}
	n.dials[sl][&cancel] = struct{}{}
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(n.dials[sl], &cancel)
	}
}

// interruptDials cancels the dials in progress for slot sl.
func (n *node) interruptDials(sl slot) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for cancel := range n.dials[sl] {
		(*cancel)()
	}
}

// interruptConns closes the sockets of the slot's open connections: a
// statement waiting on the node fails at once instead of at its own
// deadline. The connections' owners find them broken. It returns how many
// there were.
func (n *node) interruptConns(sl slot) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	for pc := range n.conns[sl] {
		pc.abort()
	}
	return len(n.conns[sl])
}

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

	known := make(map[string]bool)
	for i, nc := range cfg.Nodes() {
		known[nc.Name] = true
		n := &node{index: i, name: nc.Name, breaker: newBreaker(cfg, nc.Name, o.logger)}
		n.connectTimeout = nc.ConnConfig.ConnectTimeout
		if custom, ok := o.nodeConnectors[nc.Name]; ok {
			n.rw, n.ro, n.custom = custom, custom, true
			if roc, ok := custom.(ReadOnlyConnector); ok {
				n.ro, n.custom = readOnlyConnector{roc}, false
			}
		} else {
			n.rw = stdlib.GetConnector(*nc.ConnConfig)
			ro := nc.ConnConfig.Copy()
			if ro.RuntimeParams == nil {
				ro.RuntimeParams = make(map[string]string)
			}
			ro.RuntimeParams["default_transaction_read_only"] = "on"
			n.ro = stdlib.GetConnector(*ro)
		}
		c.nodes = append(c.nodes, n)
	}
	c.pgxArgs = true
	for _, n := range c.nodes {
		if _, ok := n.rw.Driver().(*stdlib.Driver); !ok {
			c.pgxArgs = false
		}
	}
	for name := range o.nodeConnectors {
		if !known[name] {
			return nil, fmt.Errorf("unified: WithNodeConnector: %q is not a node of the config (nodes: %v)", name, c.nodeNames())
		}
	}
	if c.tel, err = newTelemetry(c, o); err != nil {
		return nil, err
	}
	if o.static {
		primary := -1
		for _, n := range c.nodes {
			if n.name == o.staticPrimary {
				primary = n.index
			}
		}
		if primary < 0 {
			return nil, fmt.Errorf("unified: WithStaticPrimary: %q is not a node of the config (nodes: %v)", o.staticPrimary, c.nodeNames())
		}
		c.topo.Store(staticSnapshot(c.nodeNames(), primary))
	} else {
		c.mon = newMonitor(c)
	}
	return c, nil
}

func (c *Connector) nodeNames() []string {
	names := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		names[i] = n.name
	}
	return names
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
		for _, n := range c.nodes {
			n.interruptDials(slotPrimary)
			n.interruptDials(slotRead)
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

// snapshot returns the current topology, nil before the first probe.
func (c *Connector) snapshot() *topology.Snapshot { return c.topo.Load() }

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
