// Package scenario is the failover the client examples (sqlx, gorm, goose,
// bun) live through in the middle of their work: while the example's own
// operation runs in a loop through its client library, the primary is
// SIGKILLed and the most advanced replica promoted, as a failover manager
// would. It records when each operation began and how it ended, so the
// examples can show, and their tests assert, that the only operations that
// failed were the ones pgx fails too: those in flight on the primary that
// died.
//
// It is demo scaffolding: the part of each example worth copying is the
// client code around it.
package scenario

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, to ask each node directly

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/examples/internal/demo"
	"github.com/unifiedsql/unified/pgtest"
)

// Op is one operation through the client under test; i counts the calls
// from 0. It gets a context bounded by OpTimeout.
type Op func(ctx context.Context, i int) error

// OpTimeout bounds one Op. unified makes an operation that needs the
// primary wait for the new one within its context's deadline.
const OpTimeout = 10 * time.Second

// Result is what the operations saw across the failover.
type Result struct {
	Killed, Promoted string        // node names
	PromotedAfter    time.Duration // from the kill to the new primary accepting writes
	// Resumed: from the promotion to the end of the first operation that
	// succeeded after it; -1 when none did.
	Resumed time.Duration
	Ops, OK int
	// Failures by when the operation began: before the kill (in flight on
	// the primary that died, which pgx fails as well), between the kill
	// and the promotion (sessions of a killed PostgreSQL keep answering
	// for some milliseconds), and after the promotion, where no operation
	// may fail.
	InFlight, Outage, Late []error
}

// Failed counts every failure.
func (r Result) Failed() int { return len(r.InFlight) + len(r.Outage) + len(r.Late) }

// CommitUnknown counts the failures that wrap unified.ErrCommitUnknown.
func (r Result) CommitUnknown() int {
	n := 0
	for _, errs := range [][]error{r.InFlight, r.Outage, r.Late} {
		for _, err := range errs {
			if errors.Is(err, unified.ErrCommitUnknown) {
				n++
			}
		}
	}
	return n
}

// Survived says whether the client came through the failover as it
// should: no operation begun after the promotion failed, and operations
// succeeded on the new primary. nil when it did.
func (r Result) Survived() error {
	switch {
	case len(r.Late) > 0:
		return fmt.Errorf("%d operations begun after the promotion failed, e.g. %w", len(r.Late), r.Late[0])
	case r.Resumed < 0:
		return errors.New("no operation succeeded after the promotion")
	}
	return nil
}

func (r Result) String() string {
	resumed := "never"
	if r.Resumed >= 0 {
		resumed = fmt.Sprintf("%d ms after the promotion", r.Resumed.Milliseconds())
	}
	return fmt.Sprintf("%d operations during the failover, %d ok, %d failed (%d in flight at the kill, %d begun during the outage, %d after the promotion; %d ErrCommitUnknown); first success %s",
		r.Ops, r.OK, r.Failed(), len(r.InFlight), len(r.Outage), len(r.Late), r.CommitUnknown(), resumed)
}

// Failover is what FailOver did.
type Failover struct {
	Killed, Promoted     string    // node names
	KilledAt, PromotedAt time.Time // just before the SIGKILL; when the new primary first accepted writes
}

// FailOver SIGKILLs the primary of cl and fails over to the most advanced
// replica (pgtest.Cluster.FailOver), as a failover manager would, printing
// both steps to out. Call it from the test's goroutine.
func FailOver(tb testing.TB, cl *pgtest.Cluster, out io.Writer) Failover {
	tb.Helper()
	old := cl.Primary()
	f := Failover{Killed: cl.Node(old).Name(), KilledAt: time.Now()}
	fmt.Fprintf(out, ">>> SIGKILL %s, the primary\n", f.Killed)
	cl.Kill(old)
	target, err := cl.FailOver()
	if err != nil {
		tb.Fatal(err)
	}
	f.Promoted, f.PromotedAt = cl.Node(target).Name(), cl.Node(target).PromotedAt()
	fmt.Fprintf(out, ">>> %s promoted: it accepts writes %d ms after the kill\n", f.Promoted, f.PromotedAt.Sub(f.KilledAt).Milliseconds())
	return f
}

// FailOverUnderLoad runs op in a loop on a goroutine of its own for 300 ms,
// fails cl over (FailOver), and
// keeps op running until 20 operations succeeded after the promotion, or
// for 10 s. It must be called from the test's goroutine (pgtest's methods
// fail tb). It prints the events and the result to out.
func FailOverUnderLoad(tb testing.TB, cl *pgtest.Cluster, out io.Writer, op Op) Result {
	tb.Helper()
	ctx := tb.Context()
	type outcome struct {
		began, ended time.Time
		err          error
	}
	var (
		mu       sync.Mutex // protects outcomes
		outcomes []outcome
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer halt()
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			default:
			}
			began := time.Now()
			octx, cancel := context.WithTimeout(ctx, OpTimeout)
			err := op(octx, i)
			cancel()
			mu.Lock()
			outcomes = append(outcomes, outcome{began: began, ended: time.Now(), err: err})
			mu.Unlock()
			if err != nil {
				time.Sleep(5 * time.Millisecond) // no spinning on a persistent error
			}
		}
	})
	okSince := func(t time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, o := range outcomes {
			if o.err == nil && !o.ended.Before(t) {
				n++
			}
		}
		return n
	}

	time.Sleep(300 * time.Millisecond)
	f := FailOver(tb, cl, out)
	r := Result{Killed: f.Killed, Promoted: f.Promoted, PromotedAfter: f.PromotedAt.Sub(f.KilledAt), Resumed: -1}
	killedAt, promotedAt := f.KilledAt, f.PromotedAt
	for deadline := time.Now().Add(10 * time.Second); okSince(promotedAt) < 20 && time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(10 * time.Millisecond)
	}
	halt()

	for _, o := range outcomes {
		r.Ops++
		switch {
		case o.err == nil:
			r.OK++
			if !o.ended.Before(promotedAt) && (r.Resumed < 0 || o.ended.Sub(promotedAt) < r.Resumed) {
				r.Resumed = o.ended.Sub(promotedAt)
			}
		case o.began.Before(killedAt):
			r.InFlight = append(r.InFlight, o.err)
		case o.began.Before(promotedAt):
			r.Outage = append(r.Outage, o.err)
		default:
			r.Late = append(r.Late, o.err)
		}
	}
	fmt.Fprintf(out, "    %v\n", r)
	for _, err := range append(append(r.InFlight, r.Outage...), r.Late...) {
		fmt.Fprintf(out, "    failed: %v\n", err)
	}
	return r
}

// AwaitReplica waits, up to 10 s, until unified's Health (db must be a
// unified DB) shows a replica that reads can go to (state "up"), and says
// when it did: after a failover the re-pointed replica is eligible once
// the health monitor has seen it on the new primary's timeline, within the
// lag bounds; until then ReadOnly reads fall back to the primary.
func AwaitReplica(ctx context.Context, db *sql.DB, out io.Writer) {
	c, ok := unified.ConnectorOf(db)
	if !ok {
		return
	}
	start := time.Now()
	for time.Since(start) < 10*time.Second && ctx.Err() == nil {
		for _, n := range c.Stats().Health.Nodes {
			if n.Role == "replica" && n.State == "up" {
				fmt.Fprintf(out, "    unified reads from %s again (a replica, state up) %d ms later\n", n.Name, time.Since(start).Milliseconds())
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Fprintf(out, "    no replica eligible within %v: ReadOnly reads fall back to the primary\n", time.Since(start).Round(time.Millisecond))
}

// AwaitReplayed waits, up to 10 s, until every replica of cl has replayed
// what the primary had written when it was called, asking each node
// directly. An example calls it after creating its schema, so that its
// ReadOnly reads cannot meet a replica that has not seen the tables yet
// (42P01): replicas trail the primary, and an application that must read
// what it just wrote uses a session (unified.WithSession) instead.
func AwaitReplayed(ctx context.Context, cl *pgtest.Cluster) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p := cl.Primary()
	at, err := scanOn[string](ctx, cl, p, "SELECT pg_current_wal_lsn()::text")
	if err != nil {
		return fmt.Errorf("the primary's WAL position: %w", err)
	}
	for i := range cl.Len() {
		if i == p {
			continue
		}
		for {
			ok, err := scanOn[bool](ctx, cl, i, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", at)
			if err == nil && ok {
				break
			}
			if !demo.Sleep(ctx, 10*time.Millisecond) {
				return fmt.Errorf("%s has not replayed %s: %w (last error: %v)", cl.Node(i).Name(), at, ctx.Err(), err)
			}
		}
	}
	return nil
}

// scanOn runs query on node i of cl over its own connection and scans the
// one value it returns.
func scanOn[T any](ctx context.Context, cl *pgtest.Cluster, i int, query string, args ...any) (T, error) {
	var v T
	db, err := sql.Open("pgx", cl.Node(i).DSN())
	if err != nil {
		return v, err
	}
	defer db.Close()
	err = db.QueryRowContext(ctx, query, args...).Scan(&v)
	return v, err
}

// Served names the node that answered SELECT inet_server_port() with port,
// with its role in cl: "node1 (replica)".
func Served(cl *pgtest.Cluster, port int) string {
	for i := range cl.Len() {
		if cl.Node(i).Port() == port {
			return fmt.Sprintf("%s (%s)", cl.Node(i).Name(), demo.Role(cl, i))
		}
	}
	return fmt.Sprintf("port %d (not a node)", port)
}

// IsReplica reports whether port is a node of cl other than its primary.
func IsReplica(cl *pgtest.Cluster, port int) bool {
	for i := range cl.Len() {
		if cl.Node(i).Port() == port {
			return i != cl.Primary()
		}
	}
	return false
}
