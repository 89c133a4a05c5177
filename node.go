package unified

import (
	"context"
	"database/sql/driver"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/unifiedsql/unified/internal/topology"
)

// node is one server address: how to open physical connections to it, and
// what is open or being opened to it, so that the health monitor can
// interrupt it. A DSN host that is a name becomes one node per address it
// resolves to (see resolveNodes); an IP address, a Unix socket or a host
// with a WithNodeConnector connector is one node.
type node struct {
	seed   *seed  // the source host it is an address of
	source string // where it came from: "dsn", "dns" (an address of a DSN host name) or "patroni"
	// name is the node's name in Health, errors, logs and metrics: the DSN's
	// "host:port" for an address or socket given as such, "host/address:port"
	// for an address a name resolved to ("db1/10.0.0.5:5432").
	name string
	host string // the DSN's host (server.address)
	port int
	addr string // the address a name resolved to; "" otherwise
	// rw opens ordinary physical connections.
	rw driver.Connector
	// ro opens connections whose transactions are read-only by default
	// (default_transaction_read_only=on): reads use them, so a write sent
	// in ReadOnly mode fails on a replica and on the primary fallback alike.
	// For a node connector given with WithNodeConnector (custom), ro is rw
	// and read connections to the primary are made read-only by a statement
	// at dial.
	ro     driver.Connector
	custom bool
	// connectTimeout is the DSN's connect_timeout (0: none given).
	connectTimeout time.Duration
	// breaker counts this node's connection-class failures (dials,
	// statements, probes); a successful probe closes it.
	breaker *breaker
	tel     nodeTelemetry
	// inflight counts the ReadOnly statements of this Connector running
	// on the node now, under PolicyLeastLoaded only (Connector.countLoad). replayHint is the highest replay
	// position a session read saw on it since the primary last changed.
	inflight   atomic.Int64
	replayHint atomic.Uint64
	// noLoadBalance: Patroni's noloadbalance tag: no reads.
	noLoadBalance atomic.Bool

	mu sync.Mutex // protects following fields
	// conns are the open connections to this node, by slot.
	conns [numSlots]map[*physConn]struct{}
	// dials cancel the dials in progress to this node, by slot.
	dials [numSlots]map[*context.CancelFunc]struct{}
	// spares are its warm spare sessions (see spare.go): spareWant is how
	// many it should hold; one spare dial at a time, backing off after
	// spareFailures.
	spares         []*physConn
	spareWant      int
	spareDialing   bool
	spareFailures  int
	spareNotBefore time.Time
}

// seed is one host of the DSN, before resolution.
type seed struct {
	NodeConfig
	custom driver.Connector // WithNodeConnector's, nil for pgx
}

// resolvable reports whether the seed's host is a name to resolve into
// addresses (not an IP address, not a Unix socket, no node connector).
func (sd *seed) resolvable() bool {
	if sd.custom != nil {
		return false
	}
	host := sd.ConnConfig.Host
	if network, _ := pgconn.NetworkAddress(host, sd.ConnConfig.Port); network == "unix" {
		return false
	}
	_, err := netip.ParseAddr(host)
	return err != nil
}

// newNode makes the node for seed sd, at addr when addr is not "" (an
// address its name resolved to).
func (c *Connector) newNode(sd *seed, addr string) *node {
	cc := sd.ConnConfig
	n := &node{seed: sd, source: "dsn", name: sd.Name, host: cc.Host, port: int(cc.Port), addr: addr, connectTimeout: cc.ConnectTimeout}
	if addr != "" {
		n.name = cc.Host + "/" + net.JoinHostPort(addr, strconv.Itoa(int(cc.Port)))
		cc = atAddress(cc, addr)
	}
	n.breaker = newBreaker(c.cfg, n.name, c.log)
	if sd.custom != nil {
		n.rw, n.ro, n.custom = sd.custom, sd.custom, true
		if roc, ok := sd.custom.(ReadOnlyConnector); ok {
			n.ro, n.custom = readOnlyConnector{roc}, false
		}
	} else {
		var opts []stdlib.OptionOpenDB
		if hook := c.opts.beforeConnect; hook != nil {
			opts = append(opts, stdlib.OptionBeforeConnect(func(ctx context.Context, cfg *pgx.ConnConfig) error {
				if err := hook(ctx, cfg); err != nil {
					return redactHook(err, append(c.secrets.all(), cfg.Password, cc.Password))
				}
				c.secrets.see(cfg.Password)
				return nil
			}))
		}
		n.rw = stdlib.GetConnector(*cc, opts...)
		ro := cc.Copy()
		if ro.RuntimeParams == nil {
			ro.RuntimeParams = make(map[string]string)
		}
		ro.RuntimeParams["default_transaction_read_only"] = "on"
		n.ro = stdlib.GetConnector(*ro, opts...)
	}
	c.tel.initNode(n)
	return n
}

// redactHook wraps a WithBeforeConnect hook's error, with every password
// it may know out of its message.
func redactHook(err error, passwords []string) error {
	msg := err.Error()
	for _, p := range passwords {
		if p != "" {
			msg = strings.ReplaceAll(msg, p, "xxxxx")
		}
	}
	return &hookError{msg: msg, err: err}
}

// secrets are the last passwords WithBeforeConnect hooks set: a hook's
// error may quote one it set earlier.
type secrets struct {
	mu   sync.Mutex // protects last
	last []string
}

func (s *secrets) see(p string) {
	if p == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(s.last, p) {
		return
	}
	s.last = append(s.last, p)
	if len(s.last) > 4 {
		s.last = s.last[1:]
	}
}

func (s *secrets) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.last)
}

// atAddress returns a copy of cc that connects to addr: every TLS variant's
// host becomes the address. The TLS ServerName pgx derived from the host
// name at parse time is kept, so sslmode=verify-full still verifies the
// certificate against the name.
func atAddress(cc *pgx.ConnConfig, addr string) *pgx.ConnConfig {
	cc = cc.Copy()
	cc.Host = addr
	for _, f := range cc.Fallbacks {
		f.Host = addr
	}
	return cc
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

// idle reports whether nothing is open or being opened to the node.
func (n *node) idle() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for sl := range numSlots {
		if len(n.conns[sl]) > 0 || len(n.dials[sl]) > 0 {
			return false
		}
	}
	return true
}

// stalled reports whether a statement on the node started more than stall
// before now (by the Connector's coarse clock).
func (n *node) stalled(now time.Time, stall time.Duration) bool {
	limit := now.Add(-stall).UnixNano()
	n.mu.Lock()
	defer n.mu.Unlock()
	for sl := range numSlots {
		for pc := range n.conns[sl] {
			if t := pc.callStart.Load(); t != 0 && t < limit {
				return true
			}
		}
	}
	return false
}

// closeIdle closes the sockets of the node's connections no statement,
// rows or transaction is using; their owners find them broken and let them
// go (a primary session finishes its logical connection).
func (n *node) closeIdle() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for sl := range numSlots {
		for pc := range n.conns[sl] {
			if pc.active.Load() == 0 {
				pc.abort(nil)
				delete(n.conns[sl], pc) // its owner closes it at its next use
			}
		}
	}
}

// interruptConns closes the sockets of the slot's open connections: a
// statement waiting on the node fails at once instead of at its own
// deadline. The connections' owners find them broken. It returns how many
// there were. What a statement in flight returns is prefixed by cause.
func (n *node) interruptConns(sl slot, cause error) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	for pc := range n.conns[sl] {
		pc.abort(cause)
	}
	return len(n.conns[sl])
}

// view is what the health monitor publishes: a topology snapshot and the
// nodes its indexes name (s.Nodes[i] is nodes[i]). It is immutable; readers
// load it with one atomic load.
type view struct {
	s     *topology.Snapshot
	nodes []*node
	// leaving is the primary a scheduled switchover is about to demote
	// (see monitor.leaving); nil when none.
	leaving *node
	// far says, by index, which eligible replicas PolicyLeastRTT does not
	// pick (not near, see near); nil under the other policies. A read
	// session on a far replica moves at its next statement (see
	// Connector.rebalance).
	far []bool
}

// isFar reports whether node i is a far replica (see view.far).
func (v *view) isFar(i int) bool { return v.far != nil && v.far[i] }

// writable is the node writes go to: the primary, unless a scheduled
// switchover is about to take the role from it (leaving); nil otherwise.
func (v *view) writable() *node {
	if p := v.primary(); p != nil && p != v.leaving {
		return p
	}
	return nil
}

// leavingNow reports whether a scheduled switchover holds writes.
func (v *view) leavingNow() bool { return v != nil && v.leaving != nil }

// primary is the primary's node, nil when there is none.
func (v *view) primary() *node {
	if v == nil || v.s.Primary < 0 {
		return nil
	}
	return v.nodes[v.s.Primary]
}

// index is n's index in the view, -1 when it is not one of its nodes.
func (v *view) index(n *node) int {
	if v == nil {
		return -1
	}
	for i, m := range v.nodes {
		if m == n {
			return i
		}
	}
	return -1
}

// down reports whether n is down in the view.
func (v *view) down(n *node) bool {
	i := v.index(n)
	return i >= 0 && v.s.Nodes[i].State == topology.StateDown
}

// allNodes is the view's nodes; nil for a nil view.
func (v *view) allNodes() []*node {
	if v == nil {
		return nil
	}
	return v.nodes
}

// named is the node called name, nil when there is none.
func (v *view) named(name string) *node {
	if v == nil {
		return nil
	}
	for _, n := range v.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// names lists the nodes' names, in order.
func names(nodes []*node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.name
	}
	return out
}

// staticView is the view of WithStaticPrimary: fixed roles, all up.
func staticView(nodes []*node, primary int) *view {
	s := &topology.Snapshot{Primary: primary, At: time.Now(), Generation: 1}
	for i, n := range nodes {
		tn := topology.Node{Name: n.name, Role: topology.RoleReplica, State: topology.StateUp, Since: s.At, LastSeen: s.At}
		if i == primary {
			tn.Role = topology.RolePrimary
		}
		s.Nodes = append(s.Nodes, tn)
	}
	return &view{s: s, nodes: nodes}
}

// errNoSuchNode names the nodes when an option names one that is not.
func errNoSuchNode(option, name string, seeds []*seed) error {
	var known []string
	for _, sd := range seeds {
		known = append(known, sd.Name)
	}
	return fmt.Errorf("unified: %s: %q is not a node of the config (nodes: %v)", option, name, known)
}

// lookup is how host names become node addresses: WithLookupFunc's, else
// the system resolver.
func (c *Connector) lookup() func(ctx context.Context, host string) ([]string, error) {
	if c.opts.lookup != nil {
		return c.opts.lookup
	}
	return net.DefaultResolver.LookupHost
}
