package unified

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/fakepg"
	"github.com/unifiedsql/unified/internal/topology"
)

func TestSparePlan(t *testing.T) {
	rep := func(st topology.State) topology.Node { return topology.Node{Role: topology.RoleReplica, State: st} }
	for _, tc := range []struct {
		name   string
		node   topology.Node
		refill int
		keep   bool
	}{
		{"a replica that is up holds its spares", rep(topology.StateUp), 2, true},
		{"a lagging replica too: a manager may promote it", rep(topology.StateLagging), 2, true},
		{"a replica that is down: none (its sockets are gone)", rep(topology.StateDown), 0, false},
		{"the primary keeps what it has for the writes that take them, dials none", topology.Node{Role: topology.RolePrimary, State: topology.StateUp}, 0, true},
		{"a fenced primary: none", topology.Node{Role: topology.RolePrimary, State: topology.StateFenced}, 0, false},
		{"a node of unknown role: none", topology.Node{State: topology.StateDown}, 0, false},
	} {
		refill, keep := sparePlan(tc.node, 2)
		assert.Equal(t, tc.refill, refill, tc.name)
		assert.Equal(t, tc.keep, keep, tc.name)
	}
}

// sparesDialed starts a fake cluster probed every 100ms (and params) and
// lets a second pass: its replicas' warm spares are dialed.
func sparesDialed(t *testing.T, params string) (*Connector, []*fakepg.Node) {
	t.Helper()
	c, nodes := fakeCluster(t, "unified_health_interval=100ms&"+params)
	require.True(t, c.Health(t.Context()).Writable)
	time.Sleep(time.Second)
	synctest.Wait()
	return c, nodes
}

// The first write after a promotion goes out on the new primary's warm
// spare: no dial between the publication and the statement.
func TestSpareTakenAtPromotion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := sparesDialed(t, "unified_failover_timeout=10s")
		for _, i := range []int{1, 2} {
			assert.Equal(t, 2, nodes[i].Open(), "replica %d: the probe connection and one spare", i)
		}
		assert.Equal(t, 1, nodes[0].Open(), "the primary: the probe connection only")

		down(nodes[0])
		promote(nodes[1], 2)
		dials := nodes[1].Dials()
		conn := logical(t, c)
		require.NoError(t, execOn(t.Context(), conn))
		assert.Equal(t, dials, nodes[1].Dials(), "the write took the spare: no dial")
		assert.Equal(t, 1, nodes[1].Sent(fakepg.Exec))
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, 2, nodes[1].Open(), "the new primary: the probe connection and the write's session; no spare dialed for a primary")
		assert.Equal(t, 2, nodes[2].Open(), "the other replica keeps its spare")

		require.NoError(t, conn.Close())
		require.NoError(t, c.Close())
		for i, n := range nodes {
			assert.Zero(t, n.Open(), "node %d: nothing left open after Close", i)
		}
	})
}

// unified_warm_spares=0 keeps none; a replica that goes down loses its
// spares, and gets them back once it is up again.
func TestSparesFollowTheReplica(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := sparesDialed(t, "unified_warm_spares=0")
		assert.Equal(t, 1, nodes[1].Open(), "unified_warm_spares=0: the probe connection only")
		require.NoError(t, c.Close())

		c, nodes = sparesDialed(t, "unified_warm_spares=3")
		assert.Equal(t, 4, nodes[1].Open(), "three spares and the probe connection")
		down(nodes[1])
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Zero(t, nodes[1].Open(), "a replica that went down: its spares are closed")
		nodes[1].Set(func(s *fakepg.State) { s.Down = false })
		time.Sleep(3 * time.Second)
		synctest.Wait()
		assert.Equal(t, 4, nodes[1].Open(), "back up: its spares again")
		require.NoError(t, c.Close())
	})
}
