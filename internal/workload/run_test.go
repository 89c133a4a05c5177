package workload

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/fakepg"
)

// TestRunRecords runs the workload on the in-memory driver, where every
// statement succeeds and every query answers 1 (taken as port 1, node 0).
func TestRunRecords(t *testing.T) {
	db := sql.OpenDB(&fakepg.Node{})
	defer db.Close()
	r := Start(context.Background(), db, db, Config{Table: "t", Writers: 3, Readers: 2, Nodes: map[int]int{1: 0}})
	require.Eventually(t, func() bool { return r.AckedSince(time.Time{}) >= 300 }, 10*time.Second, time.Millisecond)
	o := r.Stop()
	assert.Equal(t, o, r.Stop(), "a second Stop returns the same outcomes")

	ids := map[int64]bool{}
	for _, w := range o.Writes {
		require.NoError(t, w.Err)
		assert.False(t, ids[w.ID], "id %d written twice", w.ID)
		ids[w.ID] = true
		assert.Less(t, w.ID/1_000_000_000, int64(3), "writer prefix")
	}
	require.NotEmpty(t, o.Reads)
	for _, rd := range o.Reads {
		require.NoError(t, rd.Err)
		assert.Equal(t, 0, rd.Node)
	}
	c := r.Counts()
	assert.Equal(t, Counts{WritesOK: len(o.Writes), ReadsOK: map[int]int{0: len(o.Reads)}}, c)
	first := o.Writes[0].At
	for _, w := range o.Writes {
		if w.At.Before(first) {
			first = w.At
		}
	}
	assert.Equal(t, first, r.FirstAckAfter(time.Time{}))
}

func TestRunStopsWithContext(t *testing.T) {
	db := sql.OpenDB(&fakepg.Node{})
	defer db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	r := Start(ctx, db, db, Config{Table: "t", Writers: 1, Readers: 1})
	cancel()
	o := r.Stop()
	for _, rd := range o.Reads {
		if rd.Err == nil {
			assert.Equal(t, -1, rd.Node, "a port not in Nodes is node -1")
		}
	}
}
