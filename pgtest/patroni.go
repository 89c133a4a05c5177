package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/unifiedsql/unified/internal/patroni"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// PatroniOption configures StartPatroni. The Options of Start that make
// sense for a Patroni cluster are PatroniOptions too: Synchronous,
// Verbose, ServerLogs and Replicas(2); Conf and any other Replicas count
// fail the test.
type PatroniOption interface {
	applyPatroni(*patroniSettings)
}

type patroniSettings struct {
	settings
	ttl, loopWait, retryTimeout time.Duration
}

func (o Option) applyPatroni(p *patroniSettings) { o(&p.settings) }

type patroniOption func(*patroniSettings)

func (o patroniOption) applyPatroni(p *patroniSettings) { o(p) }

// PatroniTimings sets Patroni's ttl, loop_wait and retry_timeout (whole
// seconds, rounded up; zero keeps the default of 20 s, 1 s and 3 s, the
// minimums Patroni 3.1 and later enforce). A crashed leader is replaced
// about ttl after it died.
func PatroniTimings(ttl, loopWait, retryTimeout time.Duration) PatroniOption {
	return patroniOption(func(p *patroniSettings) {
		p.ttl, p.loopWait, p.retryTimeout = ttl, loopWait, retryTimeout
	})
}

// PatroniCluster is a running Patroni cluster: one etcd and three nodes,
// each a Patroni managing its own PostgreSQL. Patroni, not the test,
// decides who leads: the test breaks a node (Crash, Hang) or asks for a
// Switchover, and waits for Patroni's answer (WaitLeaderWritable,
// WaitHealthy). Its methods report errors through the testing.TB given to
// StartPatroni (tb.Fatalf) and must be called from the test's own
// goroutine; they are otherwise safe for concurrent use.
type PatroniCluster struct {
	tb    testing.TB
	cl    *patroni.Cluster
	nodes []*PatroniNode
}

// PatroniNode is one machine of a PatroniCluster: a Patroni and the
// PostgreSQL it manages.
type PatroniNode struct {
	n *patroni.Node
}

// StartPatroni starts etcd and three Patroni nodes on free loopback
// ports, node 0 bootstrapping the cluster and leading it, nodes 1 and 2
// cloning it, and returns when the cluster is healthy (every replica
// streams; with Synchronous, one is the synchronous standby). It registers
// Close with tb.Cleanup. It takes five to ten seconds.
//
// It needs Debian's patroni (3.0.2) and etcd 3.4 ("apt-get install patroni
// etcd-server etcd-client") and the PostgreSQL server binaries (as Start).
// Without them, or when the cluster cannot start, it fails tb with the
// reason unless $UNIFIED_TEST_CLUSTER is "skip": then it skips tb, exactly
// as Start.
//
// Patroni's settings are in internal/patroni's documentation: ttl 20 s,
// loop_wait 1 s, retry_timeout 3 s (PatroniTimings), pg_rewind on, the
// etcd v2 client (Patroni 3.0.2's v3 client can let a frozen old leader
// take the leader key back and demote the new one, losing acknowledged
// commits, patroni#2689). Synchronous turns on Patroni's synchronous_mode
// (not strict): one replica is the synchronous standby and only it may be
// promoted. Note that Patroni clears synchronous_standby_names just before
// it promotes and sets it again a loop after a replica streams from the
// new leader (about 3 s measured): commits acknowledged meanwhile are on
// the new leader alone.
func StartPatroni(tb testing.TB, opts ...PatroniOption) *PatroniCluster {
	tb.Helper()
	s := patroniSettings{settings: settings{replicas: 2, logLines: 30}}
	for _, o := range opts {
		o.applyPatroni(&s)
	}
	switch {
	case s.replicas != 2:
		tb.Fatalf("pgtest: StartPatroni: Replicas(%d): a Patroni cluster has two replicas", s.replicas)
	case len(s.conf) > 0:
		tb.Fatalf("pgtest: StartPatroni: Conf is not supported (Patroni owns postgresql.conf)")
	}
	if _, _, _, err := patroni.Binaries(); err != nil {
		pgcluster.Unavailable(tb, "pgtest: ", err.Error())
	}
	po := patroni.Options{Synchronous: s.sync, TTL: s.ttl, LoopWait: s.loopWait, RetryTimeout: s.retryTimeout}
	if s.verbose {
		po.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(tb.Context(), 3*time.Minute)
	defer cancel()
	cl, err := patroni.Start(ctx, po)
	if err != nil {
		pgcluster.Unavailable(tb, "pgtest: ", "cannot start the Patroni cluster: "+err.Error())
	}
	c := &PatroniCluster{tb: tb, cl: cl}
	for i := range cl.Len() {
		c.nodes = append(c.nodes, &PatroniNode{n: cl.Node(i)})
	}
	tb.Cleanup(func() {
		if tb.Failed() && s.logLines > 0 {
			for i := range cl.Len() {
				tb.Logf("pgtest: last lines of %s's Patroni and server log:\n%s", cl.Node(i).Name, cl.LogTail(i, s.logLines))
			}
		}
		c.Close()
	})
	return c
}

// do runs op with a context bounded by the test's and by opTimeout, and
// fails the test if op fails.
func (c *PatroniCluster) do(op func(ctx context.Context) error) {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(c.tb.Context(), opTimeout)
	defer cancel()
	if err := op(ctx); err != nil {
		c.tb.Fatalf("pgtest: %v", err)
	}
}

// DSN returns a URL over the three nodes in index order, as user postgres
// (trust, no password) to database postgres, without TLS, with params
// ("key=value") appended:
//
//	postgres://postgres@127.0.0.1:p0,127.0.0.1:p1,127.0.0.1:p2/postgres?sslmode=disable&<params>
func (c *PatroniCluster) DSN(params ...string) string { return c.cl.DSN(params...) }

// RESTURLs returns the base URLs of the nodes' Patroni REST APIs in index
// order; comma-joined, the value for unified_patroni.
func (c *PatroniCluster) RESTURLs() []string { return c.cl.RESTURLs() }

// Len returns the number of nodes, 3.
func (c *PatroniCluster) Len() int { return len(c.nodes) }

// Node returns node i (0 <= i < Len()); another i fails the test.
func (c *PatroniCluster) Node(i int) *PatroniNode {
	c.tb.Helper()
	if i < 0 || i >= len(c.nodes) {
		c.tb.Fatalf("pgtest: no node %d (the cluster has %d)", i, len(c.nodes))
	}
	return c.nodes[i]
}

// Leader returns the node that leads now, asking the nodes themselves:
// the one running node out of recovery whose Patroni holds the leader key
// (Patroni's /primary alone answers 200 while a new leader is still in
// recovery). It fails the test when there is no single leader, as during
// a failover: use WaitLeaderWritable then.
func (c *PatroniCluster) Leader() int {
	c.tb.Helper()
	l := -1
	c.do(func(ctx context.Context) (err error) {
		l, err = c.cl.Leader(ctx)
		return err
	})
	return l
}

// SyncStandby returns the leader's synchronous standby (its
// pg_stat_replication), or -1 when it has none (an asynchronous cluster,
// or right after a failover).
func (c *PatroniCluster) SyncStandby() int {
	c.tb.Helper()
	l := c.Leader()
	s := -1
	c.do(func(ctx context.Context) error {
		conn, err := c.cl.Connect(ctx, l)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		var name string
		err = conn.QueryRow(ctx, "SELECT coalesce(min(application_name), '') FROM pg_stat_replication WHERE sync_state = 'sync'").Scan(&name)
		if err != nil {
			return err
		}
		for i := range c.nodes {
			if c.nodes[i].Name() == name {
				s = i
			}
		}
		return nil
	})
	return s
}

// Crash kills node i like a machine that dies: SIGKILL at once to its
// Patroni, its PostgreSQL and every backend. If it led, the leader key
// stays in etcd until its TTL runs out: Patroni promotes another node
// about 20 s later. The node stays down until StartNode.
func (c *PatroniCluster) Crash(i int) {
	c.tb.Helper()
	c.Node(i)
	c.do(func(context.Context) error { return c.cl.Crash(i) })
}

// StartNode starts node i again after Crash, on its old data, and returns
// once its Patroni answers; Patroni then rejoins it as a replica of the
// current leader (pg_rewind, or a new base backup) in the background:
// WaitHealthy waits for that.
func (c *PatroniCluster) StartNode(i int) {
	c.tb.Helper()
	c.Node(i)
	c.do(func(ctx context.Context) error { return c.cl.StartNode(ctx, i) })
}

// Hang freezes node i with SIGSTOP to its Patroni and every PostgreSQL
// process: connections complete their TCP handshake and get no answer,
// and its Patroni stops renewing the leader key (a frozen leader is
// replaced about 22 s later). Resume undoes it.
func (c *PatroniCluster) Hang(i int) {
	c.tb.Helper()
	c.Node(i)
	c.do(func(context.Context) error { return c.cl.Hang(i) })
}

// Resume thaws node i after Hang. A leader that was replaced meanwhile
// finds the key gone (the etcd v2 client compares before it writes),
// demotes itself and rejoins as a replica.
func (c *PatroniCluster) Resume(i int) {
	c.tb.Helper()
	c.Node(i)
	c.do(func(context.Context) error { return c.cl.Resume(i) })
}

// Switchover asks the leader's Patroni (POST /switchover) to hand the
// leadership to node candidate, or to a replica of Patroni's choice when
// candidate is -1: a clean shutdown of the leader, the candidate promoted,
// the old leader following it. It returns when Patroni reports the key
// moved, about 2 s after the request, which can be before the new leader
// accepts writes (WaitLeaderWritable). With Synchronous only the
// synchronous standby can be the candidate.
func (c *PatroniCluster) Switchover(candidate int) {
	c.tb.Helper()
	c.do(func(ctx context.Context) error { return c.cl.Switchover(ctx, candidate) })
}

// WaitLeaderWritable waits until a node other than not (-1: any) accepts
// writes, polling pg_is_in_recovery() on every running node every few
// milliseconds, and returns it with the moment it first answered false:
// the moment a promotion ended, which Patroni's /primary and pg_ctl
// promote report late. It fails the test after 2 minutes.
func (c *PatroniCluster) WaitLeaderWritable(not int) (int, time.Time) {
	c.tb.Helper()
	var (
		n  int
		at time.Time
	)
	c.do(func(ctx context.Context) (err error) {
		n, at, err = c.cl.WaitLeaderWritable(ctx, not)
		return err
	})
	return n, at
}

// WaitHealthy waits until the cluster is whole again: every node runs and
// is not hung, one leads, the two others stream from it (with
// Synchronous, one as its synchronous standby). After Crash call
// StartNode first: a crashed node fails it at once. It fails the test
// after 2 minutes.
func (c *PatroniCluster) WaitHealthy() {
	c.tb.Helper()
	c.do(c.cl.WaitHealthy)
}

// Running reports whether node i's processes run (hung or not).
func (c *PatroniCluster) Running(i int) bool { return c.cl.Running(i) }

// Hung reports whether node i is frozen by Hang.
func (c *PatroniCluster) Hung(i int) bool { return c.cl.Hung(i) }

// LogTail returns the last lines of node i's log: Patroni's output and
// the PostgreSQL servers' it started.
func (c *PatroniCluster) LogTail(i, lines int) string { return c.cl.LogTail(i, lines) }

// Close stops etcd and every node (SIGKILL, hung ones included) and
// removes the cluster's directory. StartPatroni registers it with
// tb.Cleanup; calling it earlier is allowed, later calls do nothing. A
// failure is reported with tb.Error.
func (c *PatroniCluster) Close() {
	c.tb.Helper()
	if err := c.cl.Close(); err != nil {
		c.tb.Errorf("pgtest: close: %v", err)
	}
}

// DSN returns a URL connecting to this node's PostgreSQL only, as user
// postgres to database postgres, without TLS.
func (n *PatroniNode) DSN() string { return n.n.DSN() }

// Name returns "node0", "node1" or "node2": the Patroni member name and
// the node's application_name on the leader.
func (n *PatroniNode) Name() string { return n.n.Name }

// Addr returns "127.0.0.1:port", the node's name in unified's Health.
func (n *PatroniNode) Addr() string { return n.n.Addr() }

// Port returns PostgreSQL's TCP port (what inet_server_port() answers).
func (n *PatroniNode) Port() int { return n.n.Port }

// RESTURL returns the base URL of the node's Patroni REST API.
func (n *PatroniNode) RESTURL() string { return n.n.RESTURL() }

// String returns the node's name and address, "node1 (127.0.0.1:5433)".
func (n *PatroniNode) String() string { return n.n.Name + " (" + n.n.Addr() + ")" }
