// Package netns holds the network-fault scenarios: a Patroni cluster
// whose etcd and three nodes each run in a network namespace of their own
// (internal/netns), on their own addresses, and the client, unified, in
// the root namespace. The faults are on the network, not the processes:
// the client cut off from the primary with no RST, a slow and lossy link
// to one replica, the primary cut off from etcd and the other nodes while
// the client still reaches it.
//
// Without root, iproute2's ip or /dev/net/tun the tests skip and say so;
// with UNIFIED_TEST_CLUSTER=require (.ci/run) they fail instead.
package netns

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	_ "github.com/unifiedsql/unified" // the "unified" driver
	"github.com/unifiedsql/unified/internal/netns"
	"github.com/unifiedsql/unified/internal/patroni"
	"github.com/unifiedsql/unified/internal/patroni/patronitest"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

var (
	ctxT      = pgcluster.CtxT
	waitFor   = patronitest.WaitFor
	ports     = patronitest.Ports
	readShare = patronitest.ReadShare
)

var (
	tnet       *netns.Net
	cluster    *patroni.Cluster
	skipReason string
)

// hostNames are the namespaces: etcd first, then the nodes in index order.
var hostNames = []string{"etcd", "node0", "node1", "node2"}

func TestMain(m *testing.M) {
	flag.Parse()
	unavailable := func(reason string) int {
		if !pgcluster.MainWithout("netns", "the network-namespace tests", reason) {
			return 1
		}
		skipReason = reason
		return m.Run()
	}
	code := func() int {
		if err := netns.Available(); err != nil {
			return unavailable(err.Error())
		}
		if _, _, _, err := patroni.Binaries(); err != nil {
			return unavailable(err.Error())
		}
		logf := func(string, ...any) {}
		if testing.Verbose() {
			logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000 ")+f+"\n", a...) }
		}
		n, err := netns.New(hostNames, logf)
		if err != nil {
			return unavailable("cannot make the namespaces: " + err.Error())
		}
		tnet = n
		defer func() {
			if err := n.Close(); err != nil {
				fmt.Fprintf(os.Stderr, "netns: close: %v\n", err)
			}
		}()
		nw := &patroni.Network{EtcdHost: n.Host("etcd").Addr.String(), EtcdExec: n.Host("etcd").Exec(), Trust: n.CIDR()}
		for _, h := range n.Hosts()[1:] {
			nw.NodeHosts = append(nw.NodeHosts, h.Addr.String())
			nw.NodeExec = append(nw.NodeExec, h.Exec())
		}
		// Main also fails when Close leaves a process or a goroutine; the
		// links' goroutines, running already, stop with n.Close and are
		// checked below.
		return patroni.Main(m, patroni.Options{Synchronous: true, Network: nw, Logf: logf}, &cluster, goleak.IgnoreCurrent())
	}()
	if left := netns.Own(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "netns: namespaces left after Close: %v\n", left)
		code = 1
	}
	os.Exit(pgcluster.CheckLeaks(code))
}

// need returns the cluster, or skips the test saying why there is none.
func need(t *testing.T) *patroni.Cluster {
	t.Helper()
	if tnet == nil {
		t.Skip("netns: skipping: " + skipReason)
	}
	return patroni.Need(t, cluster)
}

// host is node i's namespace.
func host(i int) *netns.Host { return tnet.Hosts()[1+i] }

const appName = "unified-netns"

// begin starts a scenario: the cluster, healthy (and healed when the test
// ends), a context of d, the leader, and the goroutines running before
// the test's own (for closeAndCheck).
func begin(t *testing.T, d time.Duration) (*patroni.Cluster, context.Context, int, goleak.Option) {
	t.Helper()
	c := need(t)
	ctx := ctxT(t, d)
	require.NoError(t, c.WaitHealthy(ctx))
	healthyAfter(t, c)
	leader, err := c.Leader(ctx)
	require.NoError(t, err)
	return c, ctx, leader, goleak.IgnoreCurrent()
}

// healthyAfter heals every link and the bridge when the test ends and
// waits for the cluster to be whole.
func healthyAfter(t *testing.T, c *patroni.Cluster) {
	t.Cleanup(func() {
		for i := range c.Len() {
			host(i).Link.Heal()
			_ = tnet.Rejoin(host(i))
		}
		if t.Failed() {
			for i := range c.Len() {
				t.Logf("---- %s log:\n%s", c.Node(i).Name, c.LogTail(i, 40))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.WaitHealthy(ctx); err != nil {
			t.Errorf("WaitHealthy after the test: %v", err)
		}
	})
}

// openDB opens unified over the three nodes' addresses.
func openDB(t *testing.T, c *patroni.Cluster, params ...string) *sql.DB {
	t.Helper()
	p := params
	for _, def := range []string{"unified_health_interval=200ms", "unified_health_timeout=500ms", "application_name=" + appName} {
		key, _, _ := strings.Cut(def, "=")
		if !slices.ContainsFunc(params, func(q string) bool { return strings.HasPrefix(q, key+"=") }) {
			p = append(p, def)
		}
	}
	db, err := sql.Open("unified", c.DSN(p...))
	require.NoError(t, err)
	db.SetMaxIdleConns(16)
	t.Cleanup(func() { db.Close() })
	return db
}

// closeAndCheck closes db and checks that no node keeps a connection of it
// and no goroutine started since leaks was taken runs.
func closeAndCheck(t *testing.T, c *patroni.Cluster, db *sql.DB, leaks goleak.Option) {
	t.Helper()
	require.NoError(t, db.Close())
	// A session unified interrupted while its link was cut closed its
	// socket then: the FIN was dropped, and the kernel retransmits it with
	// a doubling timeout (the eighth try ~50 s after the close), so its
	// server backend may outlive the heal by tens of seconds. Wait for it.
	// Every node is checked: the network tests stop none (NoConnectionsLeft
	// skips stopped and hung ones, which Patroni's crash tests leave).
	for i := range c.Len() {
		require.True(t, c.Running(i) && !c.Hung(i), "%s is running, not hung: its connections can be checked", c.Node(i).Name)
	}
	patronitest.NoConnectionsLeft(t, c, appName, 60*time.Second)
	patronitest.VerifyNoLeak(t, leaks)
}

func nodeByName(c *patroni.Cluster, name string) int {
	for i := range c.Len() {
		if c.Node(i).Addr() == name || strings.HasPrefix(name, c.Node(i).Addr()) {
			return i
		}
	}
	return -1
}
