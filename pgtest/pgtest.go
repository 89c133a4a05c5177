package pgtest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/unifiedsql/unified/internal/pgcluster"
)

// Option configures Start.
type Option func(*settings)

type settings struct {
	replicas int
	sync     bool
	conf     []string
	verbose  bool
	logLines int
}

// Replicas sets the number of streaming replicas (default 2); 0 starts a
// lone primary. A negative n fails the test.
func Replicas(n int) Option { return func(s *settings) { s.replicas = n } }

// Synchronous starts the primary with synchronous_standby_names =
// 'ANY 1 (*)': a commit is acknowledged once one replica has it, so a
// failover to the most advanced replica loses no acknowledged write. The
// cluster stays synchronous across FailOver and Rejoin (the new primary gets
// the same setting once a replica follows it). It needs at least one
// replica.
func Synchronous() Option { return func(s *settings) { s.sync = true } }

// Conf appends lines to postgresql.conf of every node, for example
// Conf("max_connections = 50", "log_statement = 'all'"). A setting the
// server rejects makes Start fail with the server's log.
func Conf(lines ...string) Option { return func(s *settings) { s.conf = append(s.conf, lines...) } }

// Verbose logs what the cluster does (initdb, starts, promotions, rewinds)
// through tb.Logf.
func Verbose() Option { return func(s *settings) { s.verbose = true } }

// ServerLogs sets how many of the last lines of each server's log are
// logged through tb.Log when the test has failed, before the cluster is
// closed (default 30; 0: none).
func ServerLogs(lines int) Option { return func(s *settings) { s.logLines = lines } }

// startTimeout bounds Start; opTimeout bounds every other method.
const (
	startTimeout = 2 * time.Minute
	opTimeout    = 2 * time.Minute
)

// Cluster is a running local PostgreSQL cluster: node 0 starts as the
// primary, the others as its streaming replicas. Its methods report errors
// through the testing.TB given to Start and must be called from the test's
// own goroutine, as tb.Fatal must; FailOver alone returns its error.
type Cluster struct {
	tb    testing.TB
	cl    *pgcluster.Cluster
	sync  bool
	nodes []*Node

	mu      sync.Mutex // protects primary and the nodes' promotedAt
	primary int
}

// Node is one server of a Cluster.
type Node struct {
	c          *Cluster
	n          *pgcluster.Node
	promotedAt time.Time
}

// Start starts a primary and its streaming replicas (see Replicas) from the
// local PostgreSQL server binaries, waits until every replica streams, and
// registers Close with tb.Cleanup. It takes about two seconds for three
// nodes.
//
// Without the binaries, or when the cluster cannot start, it fails tb with
// the reason (which says what to install) unless $UNIFIED_TEST_CLUSTER is
// "skip": then it skips tb. "require" fails too, and says CI asked for it.
func Start(tb testing.TB, opts ...Option) *Cluster {
	tb.Helper()
	s := settings{replicas: 2, logLines: 30}
	for _, o := range opts {
		o(&s)
	}
	switch {
	case s.replicas < 0:
		tb.Fatalf("pgtest: Replicas(%d): want 0 or more", s.replicas)
	case s.sync && s.replicas == 0:
		tb.Fatal("pgtest: Synchronous needs at least one replica")
	}
	bin, err := pgcluster.FindBinDir()
	if err != nil {
		pgcluster.Unavailable(tb, "pgtest: ", err.Error())
	}
	po := pgcluster.Options{BinDir: bin, Replicas: s.replicas, Synchronous: s.sync, ExtraConf: s.conf}
	if s.replicas == 0 {
		po.Replicas = -1 // pgcluster's "none"
	}
	if s.verbose {
		po.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(tb.Context(), startTimeout)
	defer cancel()
	cl, err := pgcluster.Start(ctx, po)
	if err != nil {
		pgcluster.Unavailable(tb, "pgtest: ", "cannot start the cluster: "+err.Error())
	}
	c := &Cluster{tb: tb, cl: cl, sync: s.sync}
	for i := range cl.Len() {
		c.nodes = append(c.nodes, &Node{c: c, n: cl.Node(i)})
	}
	tb.Cleanup(func() {
		if tb.Failed() && s.logLines > 0 {
			for i := range cl.Len() {
				tb.Logf("pgtest: last lines of %s's server log:\n%s", cl.Node(i).Name, cl.LogTail(i, s.logLines))
			}
		}
		c.Close()
	})
	return c
}

// on runs op for node i, with a context bounded by the test's and by
// opTimeout, and fails the test if i is not a node or op fails.
func (c *Cluster) on(i int, op func(ctx context.Context) error) {
	c.tb.Helper()
	c.Node(i)
	ctx, cancel := context.WithTimeout(c.tb.Context(), opTimeout)
	defer cancel()
	if err := op(ctx); err != nil {
		c.tb.Fatalf("pgtest: %v", err)
	}
}

// DSN returns a URL over all nodes in index order, as user postgres (trust
// authentication, no password) to database postgres, without TLS:
//
//	postgres://postgres@127.0.0.1:p0,127.0.0.1:p1,127.0.0.1:p2/postgres?sslmode=disable
//
// It already has a query, so parameters are appended with "&":
// c.DSN()+"&unified_health_interval=100ms".
func (c *Cluster) DSN() string { return c.cl.DSN() }

// Len returns the number of nodes, 1 + Replicas.
func (c *Cluster) Len() int { return len(c.nodes) }

// Node returns node i (0 <= i < Len()); another i fails the test.
func (c *Cluster) Node(i int) *Node {
	c.tb.Helper()
	if i < 0 || i >= len(c.nodes) {
		c.tb.Fatalf("pgtest: no node %d (the cluster has %d)", i, len(c.nodes))
	}
	return c.nodes[i]
}

// Primary returns the index of the node that is the primary as far as
// this Cluster knows: node 0, then the node of the last Promote or
// FailOver. It asks no server, so a killed or hung primary is still it.
func (c *Cluster) Primary() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.primary
}

// Kill crashes node i: SIGKILL to its postmaster, as a power cut or the
// OOM killer would. Its backends notice on their own a few milliseconds
// later and may answer, even acknowledge commits, meanwhile. The node
// stays down until Rejoin.
func (c *Cluster) Kill(i int) {
	c.tb.Helper()
	c.on(i, func(context.Context) error { return c.cl.Kill(i) })
}

// Hang freezes node i: SIGSTOP to the postmaster and every server process.
// The kernel still completes TCP handshakes; nothing answers, so only a
// timeout notices. Resume undoes it.
func (c *Cluster) Hang(i int) {
	c.tb.Helper()
	c.on(i, func(context.Context) error { return c.cl.Hang(i) })
}

// Resume continues node i after Hang (SIGCONT to all its processes).
func (c *Cluster) Resume(i int) {
	c.tb.Helper()
	c.on(i, func(context.Context) error { return c.cl.Continue(i) })
}

// Promote promotes replica i (pg_promote) and returns once it accepts
// writes; Node(i).PromotedAt tells when that was. The other replicas keep
// following the old primary, and the old primary, if it still runs, stays a
// primary on the old timeline (a split brain, should a test want one):
// FailOver is the whole recipe.
func (c *Cluster) Promote(i int) {
	c.tb.Helper()
	var at time.Time
	c.on(i, func(ctx context.Context) (err error) {
		at, err = c.cl.Promote(ctx, i)
		return err
	})
	c.promoted(c.nodes[i], at)
}

func (c *Cluster) promoted(n *Node, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.primary = n.n.Index
	n.promotedAt = at
}

// FailOver does what a failover manager does after the primary (Primary)
// was lost, by Kill, Hang or otherwise: it promotes the replica that
// received the most WAL (after waiting up to 2 s for WAL still in flight),
// re-points every other replica to it, rewinding (pg_rewind) or rebuilding
// one that cannot follow, and in a Synchronous cluster makes the new
// primary synchronous. It returns the new primary's index. The old primary
// is left as it is: Rejoin brings it back as a replica. Called while the
// old primary still runs, FailOver leaves two primaries.
//
// Unlike the other methods it returns its error, since a failover can
// fail for reasons a test may be about (no replica left, replicas hung).
func (c *Cluster) FailOver() (int, error) {
	failed := c.Primary()
	if c.Len() < 2 {
		return -1, fmt.Errorf("pgtest: no replica to fail over to")
	}
	ctx, cancel := context.WithTimeout(c.tb.Context(), opTimeout)
	defer cancel()
	target, at, _, err := c.cl.FailOver(ctx, failed)
	if err != nil {
		return -1, fmt.Errorf("pgtest: fail over from %s: %w", c.nodes[failed].Name(), err)
	}
	c.promoted(c.nodes[target], at)
	if c.sync && c.Len() > 2 {
		if err := c.cl.SetSynchronous(ctx, target, true); err != nil {
			return target, fmt.Errorf("pgtest: %w", err)
		}
	}
	return target, nil
}

// Rejoin makes node i, typically an old primary that was killed or hung, a
// replica of the current primary (Primary): it stops it, rewinds it with
// pg_rewind (rebuilding it with pg_basebackup if that fails), starts it and
// waits until it streams. Writes it had that the new primary lacks are
// discarded, as in a real cluster.
func (c *Cluster) Rejoin(i int) {
	c.tb.Helper()
	p := c.Primary()
	if i == p {
		c.tb.Fatalf("pgtest: Rejoin(%d): node %d is the primary", i, i)
	}
	c.on(i, func(ctx context.Context) error {
		if err := c.cl.Rejoin(ctx, i, p); err != nil || !c.sync {
			return err
		}
		return c.cl.SetSynchronous(ctx, p, true)
	})
}

// PauseReplay pauses WAL replay on replica i (pg_wal_replay_pause): it
// keeps receiving WAL but its data stops moving, so its lag grows while the
// primary writes. ResumeReplay undoes it.
func (c *Cluster) PauseReplay(i int) {
	c.tb.Helper()
	c.on(i, func(ctx context.Context) error { return c.cl.PauseReplay(ctx, i) })
}

// ResumeReplay resumes WAL replay on replica i (pg_wal_replay_resume).
func (c *Cluster) ResumeReplay(i int) {
	c.tb.Helper()
	c.on(i, func(ctx context.Context) error { return c.cl.ResumeReplay(ctx, i) })
}

// Close stops every server (hung ones included) and removes the cluster's
// directory. Start registers it with tb.Cleanup; calling it earlier is
// allowed, and later calls do nothing. A failure is reported with
// tb.Error.
func (c *Cluster) Close() {
	c.tb.Helper()
	if err := c.cl.Close(); err != nil {
		c.tb.Errorf("pgtest: close: %v", err)
	}
}

// DSN returns a URL connecting to this node only, as user postgres to
// database postgres, without TLS.
func (n *Node) DSN() string { return n.n.DSN() }

// Name returns "node0", "node1", ...: also the node's application_name on
// the primary and its cluster_name.
func (n *Node) Name() string { return n.n.Name }

// Addr returns "127.0.0.1:port", the node's name in unified's Health.
func (n *Node) Addr() string { return n.n.Addr() }

// Port returns the node's TCP port on 127.0.0.1 (what inet_server_port()
// answers), fixed for the cluster's life.
func (n *Node) Port() int { return n.n.Port }

// PromotedAt returns when the node last became the primary through Promote
// or FailOver, the moment it first accepted writes; zero if it never did.
func (n *Node) PromotedAt() time.Time {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	return n.promotedAt
}

// String returns the node's name and address, "node1 (127.0.0.1:5433)".
func (n *Node) String() string { return n.n.Name + " (" + n.n.Addr() + ")" }
