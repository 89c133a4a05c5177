package patroni

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/internal/patroni"
	"github.com/unifiedsql/unified/internal/workload"
)

// resources is the process's footprint after a failover, the workload
// stopped and the heap collected.
type resources struct {
	goroutines int
	fds        int
	heap       uint64 // runtime.MemStats.HeapInuse
}

func measure() resources {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds, _ := os.ReadDir("/proc/self/fd")
	return resources{goroutines: runtime.NumGoroutine(), fds: len(fds), heap: ms.HeapInuse}
}

func (r resources) String() string {
	return fmt.Sprintf("goroutines %d, fds %d, heap %.1f MiB", r.goroutines, r.fds, float64(r.heap)/(1<<20))
}

// meanOf averages a third of the measures.
func meanOf(rs []resources) (g, f, h float64) {
	for _, r := range rs {
		g += float64(r.goroutines)
		f += float64(r.fds)
		h += float64(r.heap)
	}
	n := float64(len(rs))
	return g / n, f / n, h / n
}

// TestSoak runs -soak failovers in a row (CI: 3) through one unified DB,
// alternating a crash, a hang and a switchover of the leader, each under
// the load of 8 writers and 4 ReadOnly readers and each followed by the
// rejoin of the faulted node. It prints a running tally, judges every
// failover's writes again at the end against the final leader (lost 0,
// dup 0, unflagged 0 over the whole run), and compares the process's
// goroutines, file descriptors and heap between the first and the last
// third of the failovers.
func TestSoak(t *testing.T) {
	c := patroni.Need(t, cluster)
	n := *soak
	if n < 1 {
		t.Skip("-soak=0")
	}
	ctx := ctxT(t, time.Duration(n)*2*time.Minute+time.Minute)
	require.NoError(t, c.WaitHealthy(ctx))
	healthyAfter(t, c)
	leaks := goleak.IgnoreCurrent()
	db := openDB(t, c)
	kinds := []fault{leaderCrash, leaderHang, switchover}

	t0 := time.Now()
	var (
		outs                            []outcome
		res                             []resources
		acked, unknown, failed, reads   int
		lost, dup, unflagged, readsFail int
	)
	for k := range n {
		f := kinds[k%len(kinds)]
		o := faultUnderLoad(ctx, t, c, db, fmt.Sprintf("soak_%d", k), f)
		outs = append(outs, o)
		r := measure()
		res = append(res, r)
		acked += o.v.Acked
		unknown += o.v.Unknown
		failed += o.v.Failed
		lost += o.v.Lost
		dup += o.v.Duplicates
		unflagged += o.v.FailedStored
		reads += o.readsAll
		readsFail += o.failAll
		t.Logf("failover %d/%d, %s of node%d -> node%d writable after %v, client recovery %v: acked %d unknown %d failed %d lost %d dup %d unflagged %d, reads %d ok %d failed | total after %v: acked %d unknown %d failed %d lost %d dup %d unflagged %d, reads %d ok %d failed | %s",
			k+1, n, f, o.faulted, o.leader, o.promotedAt.Sub(o.faultAt).Round(time.Millisecond), o.resumed.Sub(o.promotedAt).Round(time.Millisecond),
			o.v.Acked, o.v.Unknown, o.v.Failed, o.v.Lost, o.v.Duplicates, o.v.FailedStored, o.readsAll, o.failAll,
			time.Since(t0).Round(time.Second), acked, unknown, failed, lost, dup, unflagged, reads, readsFail, r)
		for _, s := range o.v.Samples(3) {
			t.Logf("  error: %s", s)
		}
		if t.Failed() {
			break
		}
	}

	// The whole run, judged again against the leader at the end: a write
	// acknowledged in an early failover must have survived the later ones.
	final, err := c.Leader(ctx)
	require.NoError(t, err)
	var whole workload.Verdict
	for k, o := range outs {
		stored, err := workload.IDCounts(ctx, c.Node(final).DSN(), fmt.Sprintf("soak_%d", k))
		require.NoError(t, err)
		v := workload.Judge(o.writes.outcomes(), stored, time.Time{}, time.Time{})
		whole.Acked += v.Acked
		whole.Lost += v.Lost
		whole.Duplicates += v.Duplicates
		whole.FailedStored += v.FailedStored
		whole.Unknown += v.Unknown
	}
	t.Logf("soak: %d failovers in %v; whole run judged on node%d: acked %d, unknown %d, lost %d, dup %d, unflagged %d; reads %d ok, %d failed (%.4f %%)",
		len(outs), time.Since(t0).Round(time.Second), final, whole.Acked, whole.Unknown, whole.Lost, whole.Duplicates, whole.FailedStored,
		reads, readsFail, readShare(reads, readsFail))
	assert.Zero(t, whole.Lost, "acknowledged writes lost over the run")
	assert.Zero(t, whole.Duplicates, "writes stored twice over the run")
	assert.Zero(t, whole.FailedStored, "stored writes without ErrCommitUnknown over the run")

	if len(res) >= 3 {
		third := len(res) / 3
		g0, f0, h0 := meanOf(res[:third])
		g1, f1, h1 := meanOf(res[len(res)-third:])
		t.Logf("resources, first third vs last third of %d failovers: goroutines %.1f -> %.1f, fds %.1f -> %.1f, heap %.1f -> %.1f MiB",
			len(res), g0, g1, f0, f1, h0/(1<<20), h1/(1<<20))
		// Slack: idle pool connections come and go (16 idle at most, each
		// one fd and a goroutine or two), the heap breathes.
		assert.LessOrEqual(t, g1, g0+20, "goroutines grow")
		assert.LessOrEqual(t, f1, f0+20, "file descriptors grow")
		assert.LessOrEqual(t, h1, h0*1.5+16<<20, "heap grows")
	}
	require.NoError(t, db.Close())
	noConnectionsLeft(t, c)
	verifyNoLeak(t, leaks)
}
