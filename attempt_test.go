package unified

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/fakepg"
)

// These tests run the I/O loop of one operation (attempt.go, with conn.go
// and rows.go around it) over in-memory nodes whose hooks fail a statement
// before it is sent, break the connection after it was sent, hang it, or
// answer a SQLSTATE: invariants 3, 4 and 9 of DESIGN.md §5 end to end,
// without PostgreSQL. outcome_test.go holds the rules alone; these check
// that the loop gathers the right facts and applies the verdict (what the
// caller gets, how many times the node got the statement, what becomes of
// the logical connection). Time is synctest's.

// execOn runs one INSERT on the logical connection c.
func execOn(ctx context.Context, c *Conn) error {
	_, err := c.ExecContext(ctx, "INSERT INTO t VALUES (1)", nil)
	return err
}

// assertFinished checks that c is finished: database/sql discards it
// before reuse and every later call fails before sending anything.
func assertFinished(t *testing.T, c *Conn, n *fakepg.Node) {
	t.Helper()
	assert.False(t, c.IsValid(), "IsValid")
	assert.ErrorIs(t, c.ResetSession(t.Context()), driver.ErrBadConn, "ResetSession")
	dials, sent := n.Dials(), n.Sent(fakepg.Any)
	assert.ErrorIs(t, execOn(t.Context(), c), driver.ErrBadConn, "a later call")
	assert.Equal(t, dials, n.Dials(), "a finished connection dials nothing")
	assert.Equal(t, sent, n.Sent(fakepg.Any), "a finished connection sends nothing")
}

// TestAttemptPrimary: operations on the primary session, static roles.
func TestAttemptPrimary(t *testing.T) {
	cases := []struct {
		name string
		mode Mode
		// used: a statement ran on the session before.
		used bool
		arm  func(n *fakepg.Node)
		run  func(ctx context.Context, c *Conn) error
		// check gets the caller's error.
		check          func(t *testing.T, err error)
		dials, sent    int // after the operation (a used session counts its first statement)
		finished, live bool
	}{
		{
			name: "exec broke after it was sent: ErrCommitUnknown, sent once",
			arm:  func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.BreakAfterSend()) },
			run:  execOn,
			check: func(t *testing.T, err error) {
				assert.ErrorIs(t, err, ErrCommitUnknown)
				assert.ErrorIs(t, err, io.ErrUnexpectedEOF, "the cause is kept")
				var ne *NodeError
				require.ErrorAs(t, err, &ne)
				assert.Equal(t, "n0:5432", ne.Node)
				assert.Equal(t, "exec", ne.Op)
				assert.NotErrorIs(t, err, driver.ErrBadConn)
			},
			dials: 1, sent: 1, finished: true,
		},
		{
			name: "exec on a used session broke after it was sent: ErrCommitUnknown, sent once",
			used: true,
			arm:  func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.BreakAfterSend()) },
			run:  execOn,
			check: func(t *testing.T, err error) {
				assert.ErrorIs(t, err, ErrCommitUnknown)
			},
			dials: 1, sent: 2, finished: true,
		},
		{
			name: "INSERT ... RETURNING (a query) broke after it was sent: ErrCommitUnknown",
			arm:  func(n *fakepg.Node) { n.On(fakepg.Query, fakepg.BreakAfterSend()) },
			run: func(ctx context.Context, c *Conn) error {
				_, err := c.QueryContext(ctx, "INSERT INTO t VALUES (1) RETURNING id", nil)
				return err
			},
			check: func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrCommitUnknown) },
			dials: 1, sent: 1, finished: true,
		},
		{
			name: "57P01 after an autocommit write: ErrCommitUnknown",
			arm:  func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.Fatal("57P01")) },
			run:  execOn,
			check: func(t *testing.T, err error) {
				assert.ErrorIs(t, err, ErrCommitUnknown)
				var se *fakepg.Error
				assert.ErrorAs(t, err, &se)
			},
			dials: 1, sent: 1, finished: true,
		},
		{
			name: "COMMIT broke after it was sent: ErrCommitUnknown, never sent again",
			arm:  func(n *fakepg.Node) { n.On(fakepg.Commit, fakepg.BreakAfterSend()) },
			run: func(ctx context.Context, c *Conn) error {
				tx, err := c.BeginTx(ctx, driver.TxOptions{})
				if err != nil {
					return err
				}
				if err := execOn(ctx, c); err != nil {
					return err
				}
				return tx.Commit()
			},
			check: func(t *testing.T, err error) {
				assert.ErrorIs(t, err, ErrCommitUnknown)
				var ne *NodeError
				require.ErrorAs(t, err, &ne)
				assert.Equal(t, "commit", ne.Op)
			},
			dials: 1, sent: 3, finished: true,
		},
		{
			name: "statement in a transaction broke: a plain NodeError, not sent again",
			arm:  func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.BreakAfterSend()) },
			run: func(ctx context.Context, c *Conn) error {
				tx, err := c.BeginTx(ctx, driver.TxOptions{})
				if err != nil {
					return err
				}
				err = execOn(ctx, c)
				_ = tx.Rollback()
				return err
			},
			check: func(t *testing.T, err error) {
				var ne *NodeError
				assert.ErrorAs(t, err, &ne)
				assert.NotErrorIs(t, err, ErrCommitUnknown, "a statement inside a transaction commits nothing")
				assert.NotErrorIs(t, err, driver.ErrBadConn)
			},
			dials: 1, sent: 2, finished: true,
		},
		{
			name:  "unused session lost before sending: dialed again, sent once",
			arm:   func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.BadConn()) },
			run:   execOn,
			check: func(t *testing.T, err error) { assert.NoError(t, err) },
			dials: 2, sent: 1, live: true,
		},
		{
			name:  "unused session, write failed as safe to retry: dialed again, sent once",
			arm:   func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.SafeToRetry()) },
			run:   execOn,
			check: func(t *testing.T, err error) { assert.NoError(t, err) },
			dials: 2, sent: 1, live: true,
		},
		{
			name:  "used session lost before sending: driver.ErrBadConn, the logical connection is finished",
			used:  true,
			arm:   func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.BadConn()) },
			run:   execOn,
			check: func(t *testing.T, err error) { assert.ErrorIs(t, err, driver.ErrBadConn) },
			dials: 1, sent: 1, finished: true,
		},
		{
			name:  "used session whose node went down between statements: driver.ErrBadConn before sending",
			used:  true,
			arm:   func(n *fakepg.Node) { down(n) },
			run:   execOn,
			check: func(t *testing.T, err error) { assert.Equal(t, driver.ErrBadConn, err) },
			dials: 1, sent: 1, finished: true,
		},
		{
			name: "Batch: lost before sending on an unused session, not sent again",
			mode: Batch,
			arm:  func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.BadConn()) },
			run:  execOn,
			check: func(t *testing.T, err error) {
				var ne *NodeError
				assert.ErrorAs(t, err, &ne, "bulk jobs own their retries")
				assert.NotErrorIs(t, err, driver.ErrBadConn, "database/sql must not run it again either")
			},
			dials: 1, sent: 0,
		},
		{
			name: "BEGIN broke on an unused session: it had no effect, sent again",
			arm:  func(n *fakepg.Node) { n.On(fakepg.Begin, fakepg.BreakAfterSend()) },
			run: func(ctx context.Context, c *Conn) error {
				tx, err := c.BeginTx(ctx, driver.TxOptions{})
				if err != nil {
					return err
				}
				return tx.Commit()
			},
			check: func(t *testing.T, err error) { assert.NoError(t, err) },
			dials: 2, sent: 3, live: true, // BEGIN twice, COMMIT
		},
		{
			name: "BEGIN broke on a used session: driver.ErrBadConn, database/sql moves it",
			used: true,
			arm:  func(n *fakepg.Node) { n.On(fakepg.Begin, fakepg.BreakAfterSend()) },
			run: func(ctx context.Context, c *Conn) error {
				_, err := c.BeginTx(ctx, driver.TxOptions{})
				return err
			},
			check: func(t *testing.T, err error) { assert.Equal(t, driver.ErrBadConn, err) },
			dials: 1, sent: 2, finished: true,
		},
		{
			name: "the caller canceled a hung write: the connection closed under it, as pgx closes it; ErrCommitUnknown, sent once",
			arm:  func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.Hang()) },
			run: func(ctx context.Context, c *Conn) error {
				ctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				return execOn(ctx, c)
			},
			check: func(t *testing.T, err error) {
				assert.ErrorIs(t, err, context.DeadlineExceeded)
				// The connection closed under a write that was sent, as pgx
				// closes it: it may have committed.
				assert.ErrorIs(t, err, ErrCommitUnknown)
			},
			dials: 1, sent: 1, finished: true,
		},
		{
			name: "the caller's context ended before sending: nothing sent, the session lives",
			used: true,
			run: func(ctx context.Context, c *Conn) error {
				ctx, cancel := context.WithCancel(ctx)
				cancel()
				return execOn(ctx, c)
			},
			check: func(t *testing.T, err error) { assert.ErrorIs(t, err, context.Canceled) },
			dials: 1, sent: 1, live: true,
		},
		{
			name: "server error: the node's error value as it is, the session lives",
			arm:  func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.ServerError("23505")) },
			run:  execOn,
			check: func(t *testing.T, err error) {
				var se *fakepg.Error
				require.ErrorAs(t, err, &se)
				assert.Same(t, se, err, "not wrapped (invariant 5)")
				assert.Equal(t, "23505", se.Code)
			},
			dials: 1, sent: 1, live: true,
		},
		{
			name:  "too many connections at dial: backoff and dial again",
			arm:   func(n *fakepg.Node) { n.On(fakepg.Connect, fakepg.ServerError("53300")) },
			run:   execOn,
			check: func(t *testing.T, err error) { assert.NoError(t, err) },
			dials: 2, sent: 1, live: true,
		},
		{
			name: "authentication failed at dial: never again",
			arm:  func(n *fakepg.Node) { n.On(fakepg.Connect, fakepg.ServerError("28P01")) },
			run:  execOn,
			check: func(t *testing.T, err error) {
				var ne *NodeError
				require.ErrorAs(t, err, &ne)
				assert.Equal(t, "connect", ne.Op)
			},
			dials: 1, sent: 0,
		},
		{
			name:  "ping failed: driver.ErrBadConn and the session is done, as pgx",
			used:  true,
			arm:   func(n *fakepg.Node) { n.On(fakepg.Ping, fakepg.BreakAfterSend()) },
			run:   func(ctx context.Context, c *Conn) error { return c.Ping(ctx) },
			check: func(t *testing.T, err error) { assert.Equal(t, driver.ErrBadConn, err) },
			dials: 1, sent: 2, finished: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, n := staticFake(t, "unified_retry_max=3")
				conn := logical(t, c)
				ctx := t.Context()
				if tc.mode != 0 {
					ctx = WithMode(ctx, tc.mode)
				}
				if tc.used {
					require.NoError(t, execOn(ctx, conn))
				}
				if tc.arm != nil {
					tc.arm(n)
				}
				err := tc.run(ctx, conn)
				tc.check(t, err)
				assert.Equal(t, tc.dials, n.Dials(), "dials")
				assert.Equal(t, tc.sent, n.Sent(fakepg.Any), "statements that reached the node")
				switch {
				case tc.finished:
					assertFinished(t, conn, n)
				case tc.live:
					assert.True(t, conn.IsValid())
					require.NoError(t, execOn(ctx, conn), "the session goes on")
					assert.Equal(t, tc.dials, n.Dials(), "on the same physical connection")
				}
			})
		})
	}
}

// TestAttemptThroughDatabaseSQL: what database/sql does with the error of
// a pooled call. A used session lost before sending is driver.ErrBadConn:
// database/sql runs the call on another logical connection, and it
// reaches the node once. A Batch statement that failed before it was sent
// is not retried by the driver, and not by database/sql either: its error
// must not wrap driver.ErrBadConn.
func TestAttemptThroughDatabaseSQL(t *testing.T) {
	for _, tc := range []struct {
		name        string
		mode        Mode
		used        bool
		dials, sent int
	}{
		{"used session lost before sending: run on another connection", ReadWrite, true, 2, 2},
		{"Batch lost before sending: not run again", Batch, false, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, n := staticFake(t, "")
				db := sql.OpenDB(c)
				defer db.Close()
				db.SetMaxOpenConns(1)
				ctx := WithMode(t.Context(), tc.mode)
				if tc.used {
					_, err := db.ExecContext(ctx, "SET search_path = app")
					require.NoError(t, err)
				}
				n.On(fakepg.Exec, fakepg.BadConn())
				_, err := db.ExecContext(ctx, "INSERT INTO t VALUES (1)")
				assert.Equal(t, tc.mode != Batch, err == nil, "%v", err)
				assert.Equal(t, tc.dials, n.Dials())
				assert.Equal(t, tc.sent, n.Sent(fakepg.Exec))
			})
		})
	}
}

// TestAttemptConnBusy: a statement on a session whose rows are still open
// fails alone (pgx's "conn busy" is the caller's mistake, not the node's):
// the session, its rows and the breaker are untouched.
func TestAttemptConnBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, n := staticFake(t, "unified_breaker_failures=1")
		conn := logical(t, c)
		ctx := t.Context()
		rows, err := conn.QueryContext(ctx, "SELECT 1", nil)
		require.NoError(t, err)
		err = execOn(ctx, conn)
		assert.ErrorIs(t, err, fakepg.ErrBusy)
		assert.True(t, conn.IsValid())
		assert.Equal(t, "closed", breakerName(c.viewNow().nodes[0].breaker.state()))
		dest := make([]driver.Value, 1)
		require.NoError(t, rows.Next(dest), "the open rows still read")
		require.NoError(t, rows.Close())
		require.NoError(t, execOn(ctx, conn))
		assert.Equal(t, 1, n.Dials())
		assert.Equal(t, 2, n.Sent(fakepg.Any))
	})
}

// TestAttemptPrimaryRows: rows of an autocommit query on the primary may
// be a write's (INSERT ... RETURNING): a break while reading them is
// ErrCommitUnknown, before or after the first row, and nothing is re-run.
func TestAttemptPrimaryRows(t *testing.T) {
	for _, after := range []int{0, 1} {
		t.Run([]string{"before the first row", "after a row"}[after], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, n := staticFake(t, "")
				conn := logical(t, c)
				n.On(fakepg.Query, fakepg.BreakRowsAfter(after))
				rows, err := conn.QueryContext(t.Context(), "INSERT INTO t VALUES (1) RETURNING id", nil)
				require.NoError(t, err)
				dest := make([]driver.Value, 1)
				for i := 0; i < after; i++ {
					require.NoError(t, rows.Next(dest))
				}
				err = rows.Next(dest)
				assert.ErrorIs(t, err, ErrCommitUnknown)
				assert.ErrorIs(t, rows.Close(), ErrCommitUnknown, "Close says it again")
				assert.Equal(t, 1, n.Sent(fakepg.Any))
				assertFinished(t, conn, n)
			})
		})
	}
}

// readCluster is a monitored fake cluster whose logical connection conn
// has served one read: served is the replica that read went to, other the
// other replica.
func readCluster(t *testing.T) (c *Connector, nodes []*fakepg.Node, conn *Conn, served, other *fakepg.Node) {
	t.Helper()
	c, nodes = fakeCluster(t, "unified_health_interval=1s&unified_health_timeout=500ms")
	require.True(t, c.Health(t.Context()).Readable)
	conn = logical(t, c)
	readOn(t, conn)
	served, other = nodes[1], nodes[2]
	if nodes[2].Sent(fakepg.Query) == 1 {
		served, other = other, served
	}
	require.Equal(t, 1, served.Sent(fakepg.Query))
	return c, nodes, conn, served, other
}

// readOn runs one ReadOnly query on conn and reads its row.
func readOn(t *testing.T, conn *Conn) {
	t.Helper()
	rows, err := conn.QueryContext(WithMode(t.Context(), ReadOnly), "SELECT 1", nil)
	require.NoError(t, err)
	dest := make([]driver.Value, 1)
	require.NoError(t, rows.Next(dest))
	assert.EqualValues(t, 1, dest[0])
	require.NoError(t, rows.Close())
}

// TestAttemptRead: a ReadOnly read outside a transaction whose node failed
// it before any row reached the caller runs again on another node.
func TestAttemptRead(t *testing.T) {
	cases := []struct {
		name string
		arm  func(served *fakepg.Node)
	}{
		{"connection broke after the query was sent", func(n *fakepg.Node) { n.On(fakepg.Query, fakepg.BreakAfterSend()) }},
		{"57P01", func(n *fakepg.Node) { n.On(fakepg.Query, fakepg.Fatal("57P01")) }},
		{"rows broke before the first row", func(n *fakepg.Node) { n.On(fakepg.Query, fakepg.BreakRowsAfter(0)) }},
		{"session lost before sending", func(n *fakepg.Node) { n.On(fakepg.Query, fakepg.BadConn()) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, nodes, conn, served, other := readCluster(t)
				tc.arm(served)
				readOn(t, conn)
				assert.Equal(t, 1, other.Sent(fakepg.Query), "run on the other replica")
				assert.Equal(t, 0, nodes[0].Sent(fakepg.Any), "never on the primary")
				assert.True(t, conn.IsValid(), "the read session is the driver's: the logical connection goes on")
			})
		})
	}

	t.Run("could not dial its replica: another node", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, nodes := fakeCluster(t, "")
			require.True(t, c.Health(t.Context()).Readable)
			nodes[1].On(fakepg.Connect, fakepg.BadConn())
			nodes[2].On(fakepg.Connect, fakepg.BadConn())
			readOn(t, logical(t, c))
			assert.Equal(t, 1, nodes[1].Sent(fakepg.Query)+nodes[2].Sent(fakepg.Query), "sent once, after one refused dial")
			assert.Equal(t, 0, nodes[0].Sent(fakepg.Any))
		})
	})

	t.Run("rows broke after a row reached the caller: the caller's error, not re-run", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			_, _, conn, served, other := readCluster(t)
			served.On(fakepg.Query, fakepg.BreakRowsAfter(1))
			rows, err := conn.QueryContext(WithMode(t.Context(), ReadOnly), "SELECT 1", nil)
			require.NoError(t, err)
			dest := make([]driver.Value, 1)
			require.NoError(t, rows.Next(dest))
			err = rows.Next(dest)
			var ne *NodeError
			assert.ErrorAs(t, err, &ne)
			assert.NotErrorIs(t, err, ErrCommitUnknown, "a read commits nothing")
			_ = rows.Close()
			assert.Equal(t, 0, other.Sent(fakepg.Query))
		})
	})

	t.Run("the caller canceled a hung read: not run again", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			_, _, conn, served, other := readCluster(t)
			served.On(fakepg.Query, fakepg.Hang())
			ctx, cancel := context.WithTimeout(WithMode(t.Context(), ReadOnly), 100*time.Millisecond)
			defer cancel()
			_, err := conn.QueryContext(ctx, "SELECT 1", nil)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Equal(t, 2, served.Sent(fakepg.Query))
			assert.Equal(t, 0, other.Sent(fakepg.Query))
		})
	})

	t.Run("in a read transaction: a plain error, no other node", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			_, _, conn, served, other := readCluster(t)
			ctx := WithMode(t.Context(), ReadOnly)
			_, err := conn.BeginTx(ctx, driver.TxOptions{ReadOnly: true})
			require.NoError(t, err)
			served.On(fakepg.Query, fakepg.BreakAfterSend())
			_, err = conn.QueryContext(ctx, "SELECT 1", nil)
			var ne *NodeError
			assert.ErrorAs(t, err, &ne)
			assert.Equal(t, 0, other.Sent(fakepg.Any), "a transaction never spans two nodes")
		})
	})
}

// TestAttemptFailover: a write that finds the primary unreachable waits
// for the monitor to publish the new one, then is sent once.
func TestAttemptFailover(t *testing.T) {
	for _, tc := range []struct {
		name string
		lose func(t *testing.T, c *Connector, conn *Conn, primary *fakepg.Node)
	}{
		{"dial refused", func(t *testing.T, _ *Connector, _ *Conn, primary *fakepg.Node) { down(primary) }},
		{"unused session lost before sending", func(t *testing.T, c *Connector, conn *Conn, primary *fakepg.Node) {
			// The session is dialed (a Ping opens it and does not use it)
			// and the node goes down before the write.
			require.NoError(t, conn.Ping(t.Context()))
			down(primary)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_failover_timeout=10s")
				require.True(t, c.Health(t.Context()).Writable)
				conn := logical(t, c)
				tc.lose(t, c, conn, nodes[0])
				done := make(chan error, 1)
				start := time.Now()
				go func() { done <- execOn(t.Context(), conn) }()
				time.Sleep(2 * time.Second)
				synctest.Wait()
				select {
				case err := <-done:
					t.Fatalf("the write did not wait for a primary: %v", err)
				default:
				}
				promote(nodes[1], 2)
				require.NoError(t, <-done)
				assert.Greater(t, time.Since(start), 2*time.Second)
				assert.Equal(t, 1, nodes[1].Sent(fakepg.Exec), "sent once, to the new primary")
				assert.Equal(t, 0, nodes[0].Sent(fakepg.Exec))
				assert.Equal(t, 0, nodes[2].Sent(fakepg.Exec))
			})
		})
	}

	t.Run("no primary within unified_failover_timeout: ErrNoPrimary, nothing sent", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_failover_timeout=3s")
			require.True(t, c.Health(t.Context()).Writable)
			down(nodes[0])
			start := time.Now()
			err := execOn(t.Context(), logical(t, c))
			assert.ErrorIs(t, err, ErrNoPrimary)
			assert.InDelta(t, 3*time.Second, time.Since(start), float64(100*time.Millisecond))
			for i, n := range nodes {
				assert.Equal(t, 0, n.Sent(fakepg.Exec), "node %d", i)
			}
		})
	})
}

// TestAttemptInterrupted: a statement or dial stuck on a hung node (TCP
// open, no answer) is interrupted when the monitor's probe times out and
// the node is seen down, not at the caller's deadline.
func TestAttemptInterrupted(t *testing.T) {
	hang := func(n *fakepg.Node) { n.Set(func(s *fakepg.State) { s.Hung = true }) }

	t.Run("a read on a hung replica runs again on the other", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			_, _, conn, served, other := readCluster(t)
			hang(served)
			start := time.Now()
			ctx, cancel := context.WithTimeout(WithMode(t.Context(), ReadOnly), time.Minute)
			defer cancel()
			rows, err := conn.QueryContext(ctx, "SELECT 1", nil)
			require.NoError(t, err, "run again on the other replica, not at the caller's deadline")
			require.NoError(t, rows.Close())
			assert.Less(t, time.Since(start), 2*time.Second, "interrupted within a probe interval and timeout")
			assert.Equal(t, 2, served.Sent(fakepg.Query), "it reached the hung node")
			assert.Equal(t, 1, other.Sent(fakepg.Query))
		})
	})

	t.Run("a read dial to a hung replica is interrupted", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// least-rtt: every RTT is 0 under synctest, so the first
			// replica, n1, is chosen.
			c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_health_timeout=500ms&connect_timeout=60&unified_replica_policy=least-rtt")
			require.True(t, c.Health(t.Context()).Readable)
			hang(nodes[1])
			start := time.Now()
			readOn(t, logical(t, c))
			assert.Less(t, time.Since(start), 2*time.Second, "interrupted, not at connect_timeout")
			assert.Equal(t, 0, nodes[1].Sent(fakepg.Query))
			assert.Equal(t, 1, nodes[2].Sent(fakepg.Query), "run on the other replica")
		})
	})

	t.Run("a write hung on the old primary ends with ErrCommitUnknown when another is elected", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_health_timeout=500ms")
			require.True(t, c.Health(t.Context()).Writable)
			conn := logical(t, c)
			require.NoError(t, execOn(t.Context(), conn))
			hang(nodes[0])
			done := make(chan error, 1)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			go func() { done <- execOn(ctx, conn) }()
			time.Sleep(3 * time.Second)
			synctest.Wait()
			promoted := time.Now()
			promote(nodes[1], 2)
			err := <-done
			assert.Less(t, time.Since(promoted), time.Second, "interrupted at the election, not at the caller's deadline")
			assert.ErrorIs(t, err, ErrCommitUnknown)
			assert.Equal(t, 2, nodes[0].Sent(fakepg.Exec))
			assert.Equal(t, 0, nodes[1].Sent(fakepg.Exec), "never re-sent to the new primary")
			assertFinished(t, conn, nodes[1])
		})
	})
}

// TestAttemptRunTx: RunTx runs the whole transaction again exactly when
// the rule book says PostgreSQL rolled it back for sure.
func TestAttemptRunTx(t *testing.T) {
	boom := errors.New("boom")
	cases := []struct {
		name     string
		unified  bool // through unified; else database/sql straight on the node
		arm      func(n *fakepg.Node)
		fnErr    error
		cancel   bool // the caller's context ends inside fn, first run
		check    func(t *testing.T, err error)
		attempts int
		commits  int
	}{
		{name: "serialization failure at COMMIT: again", unified: true,
			arm:   func(n *fakepg.Node) { n.On(fakepg.Commit, fakepg.ServerError("40001")) },
			check: func(t *testing.T, err error) { assert.NoError(t, err) }, attempts: 2, commits: 2},
		{name: "deadlock in a statement: again", unified: true,
			arm:   func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.ServerError("40P01")) },
			check: func(t *testing.T, err error) { assert.NoError(t, err) }, attempts: 2, commits: 1},
		{name: "connection lost before COMMIT was sent: again", unified: true,
			arm:   func(n *fakepg.Node) { n.On(fakepg.Exec, fakepg.BreakAfterSend()) },
			check: func(t *testing.T, err error) { assert.NoError(t, err) }, attempts: 2, commits: 1},
		{name: "COMMIT broke after it was sent: ErrCommitUnknown, never again", unified: true,
			arm:   func(n *fakepg.Node) { n.On(fakepg.Commit, fakepg.BreakAfterSend()) },
			check: func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrCommitUnknown) }, attempts: 1, commits: 1},
		{name: "serialization failure every time: attempts spent, its error", unified: true,
			arm: func(n *fakepg.Node) {
				for range 3 {
					n.On(fakepg.Commit, fakepg.ServerError("40001"))
				}
			},
			check: func(t *testing.T, err error) {
				var se *fakepg.Error
				require.ErrorAs(t, err, &se)
				assert.Equal(t, "40001", se.Code)
			}, attempts: 3, commits: 3},
		{name: "fn's own error: rolled back, never again", unified: true, fnErr: boom,
			check: func(t *testing.T, err error) { assert.ErrorIs(t, err, boom) }, attempts: 1, commits: 0},
		{name: "the caller canceled: never again", unified: true, cancel: true,
			check: func(t *testing.T, err error) { assert.ErrorIs(t, err, context.Canceled) }, attempts: 1, commits: 0},
		{name: "another driver: COMMIT broke after it was sent: ErrCommitUnknown",
			arm:   func(n *fakepg.Node) { n.On(fakepg.Commit, fakepg.BreakAfterSend()) },
			check: func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrCommitUnknown) }, attempts: 1, commits: 1},
		{name: "another driver: COMMIT failed as safe to retry: taken as sent, ErrCommitUnknown",
			arm:   func(n *fakepg.Node) { n.On(fakepg.Commit, fakepg.SafeToRetry()) },
			check: func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrCommitUnknown) }, attempts: 1, commits: 0},
		{name: "another driver: serialization failure: again",
			arm:   func(n *fakepg.Node) { n.On(fakepg.Commit, fakepg.ServerError("40001")) },
			check: func(t *testing.T, err error) { assert.NoError(t, err) }, attempts: 2, commits: 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var db *sql.DB
				var n *fakepg.Node
				if tc.unified {
					var c *Connector
					c, n = staticFake(t, "unified_retry_max=3")
					db = sql.OpenDB(c)
				} else {
					n = &fakepg.Node{}
					db = sql.OpenDB(n)
				}
				defer db.Close()
				if tc.arm != nil {
					tc.arm(n)
				}
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				attempts := 0
				err := RunTx(ctx, db, nil, func(tx *sql.Tx) error {
					attempts++
					if tc.cancel {
						cancel()
						return ctx.Err()
					}
					if _, err := tx.ExecContext(ctx, "UPDATE t SET v = v + 1"); err != nil {
						return err
					}
					return tc.fnErr
				})
				tc.check(t, err)
				assert.Equal(t, tc.attempts, attempts, "runs of fn")
				assert.Equal(t, tc.commits, n.Sent(fakepg.Commit), "COMMITs that reached the node")
			})
		})
	}
}

// queriesOf counts how often node n was sent query q.
func queriesOf(n *fakepg.Node, q string) int {
	k := 0
	for _, s := range n.Recorded() {
		if s == "query "+q {
			k++
		}
	}
	return k
}

// belowFloor starts a fake cluster probed each second (and params) with
// every node at LSN 150, below a session floor at 200 (see replayedBy).
func belowFloor(t *testing.T, params string) (*Connector, []*fakepg.Node) {
	t.Helper()
	c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_health_timeout=500ms"+params)
	for _, n := range nodes {
		n.Set(func(s *fakepg.State) { s.LSN = 150 })
	}
	require.True(t, c.Health(t.Context()).Readable)
	return c, nodes
}

// replayedBy moves the primary n0, and the replicas by, to LSN 200 and
// lets a probe round see it: a session floor at 200 is replayed there
// only (the tests start every node at 150).
func replayedBy(nodes []*fakepg.Node, by ...int) {
	nodes[0].Set(func(s *fakepg.State) { s.LSN = 200 })
	for _, i := range by {
		nodes[i].Set(func(s *fakepg.State) { s.LSN = 200 })
	}
	time.Sleep(1100 * time.Millisecond)
	synctest.Wait()
}

// A session read whose replica breaks before the first row runs again
// only where the session's floor has been replayed (invariant 10): the
// read run again from its rows asks what the first try asked.
func TestAttemptRerunKeepsSessionFloor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := belowFloor(t, "")
		replayedBy(nodes, 1)
		require.True(t, replicaEligible(c.viewNow().s, 2), "n2 is eligible, below the floor")
		sess := &Session{floor: floor{lsn: 200, timeline: 1}}
		ctx := WithSession(WithMode(t.Context(), ReadOnly), sess)
		for _, n := range nodes {
			n.Record()
		}
		conn := logical(t, c)
		nodes[1].On(fakepg.Query, fakepg.BreakRowsAfter(0))
		rows, err := conn.QueryContext(ctx, "SELECT 1", nil)
		require.NoError(t, err)
		require.Equal(t, 1, queriesOf(nodes[1], "SELECT 1"), "the read went to n1, which replayed the floor")
		require.NoError(t, rows.Next(make([]driver.Value, 1)), "n1 broke before the first row: run again")
		require.NoError(t, rows.Close())
		assert.Equal(t, 0, queriesOf(nodes[2], "SELECT 1"), "n2 has not replayed the floor: %q", nodes[2].Recorded())
		assert.Equal(t, 1, queriesOf(nodes[0], "SELECT 1"), "run again on the primary, read-only: the floor is there")
	})
}

// A read whose rows keep breaking before the first row is run again at
// most unified_retry_max times in all.
func TestAttemptRowsRerunBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_retry_max=3&unified_breaker_failures=100")
		require.True(t, c.Health(t.Context()).Readable)
		for range 10 {
			nodes[1].On(fakepg.Query, fakepg.BreakRowsAfter(0))
			nodes[2].On(fakepg.Query, fakepg.BreakRowsAfter(0))
		}
		conn := logical(t, c)
		rows, err := conn.QueryContext(WithMode(t.Context(), ReadOnly), "SELECT 1", nil)
		require.NoError(t, err)
		_ = rows.Next(make([]driver.Value, 1))
		_ = rows.Close()
		sent := nodes[1].Sent(fakepg.Query) + nodes[2].Sent(fakepg.Query)
		assert.LessOrEqual(t, sent, 3, "unified_retry_max=3")
		assert.GreaterOrEqual(t, sent, 2, "the read ran again at least once")
	})
}

// A session token from a timeline this process has not seen yet (another
// process follows the promoted node already) makes the read wait for the
// monitor to see it, not run on the old timeline's primary, which cannot
// hold the write (invariant 10).
func TestAttemptFloorFromNewerTimeline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_health_timeout=500ms")
		require.True(t, c.Health(t.Context()).Readable)
		time.Sleep(100 * time.Millisecond) // between probes
		promote(nodes[1], 2)               // n0 still answers as the primary of timeline 1
		nodes[1].Set(func(s *fakepg.State) { s.LSN = 300 })
		sess := &Session{floor: floor{lsn: 250, timeline: 2}}
		for _, n := range nodes {
			n.Record()
		}
		conn := logical(t, c)
		rows, err := conn.QueryContext(WithSession(WithMode(t.Context(), ReadOnly), sess), "SELECT 1", nil)
		require.NoError(t, err)
		_ = rows.Close()
		assert.Equal(t, 0, queriesOf(nodes[0], "SELECT 1"), "n0 is on timeline 1: %q", nodes[0].Recorded())
		assert.Equal(t, 1, queriesOf(nodes[1], "SELECT 1"), "n1, the primary of timeline 2, has the write")
	})
}

// With no node of the session's timeline in sight, the read fails at the
// failover deadline instead of running on the old timeline.
func TestAttemptFloorFromUnseenTimelineFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_failover_timeout=2s")
		require.True(t, c.Health(t.Context()).Readable)
		sess := &Session{floor: floor{lsn: 250, timeline: 2}}
		for _, n := range nodes {
			n.Record()
		}
		conn := logical(t, c)
		start := time.Now()
		_, err := conn.QueryContext(WithSession(WithMode(t.Context(), ReadOnly), sess), "SELECT 1", nil)
		require.ErrorIs(t, err, ErrNoPrimary)
		assert.Contains(t, err.Error(), "timeline 2")
		assert.Equal(t, 2*time.Second, time.Since(start).Round(time.Second), "it waited unified_failover_timeout")
		for _, n := range nodes {
			assert.Equal(t, 0, queriesOf(n, "SELECT 1"), "%s ran the read", n)
		}
	})
}

// With a session, a transaction the caller began with a BEGIN statement
// gets no statement of the driver's inside it (a SET TRANSACTION right
// after BEGIN must stay the first statement); its COMMIT raises the floor.
func TestAttemptCaptureNotInsideCallersBlock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, n := staticFake(t, "")
		conn := logical(t, c)
		sess := NewSession()
		ctx := WithSession(t.Context(), sess)
		n.Record()
		for _, q := range []string{"BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "INSERT INTO t VALUES (1)"} {
			_, err := conn.ExecContext(ctx, q, nil)
			require.NoError(t, err)
		}
		assert.Equal(t, []string{"exec BEGIN", "exec SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "exec INSERT INTO t VALUES (1)"}, n.Recorded())
		assert.True(t, sess.get().zero(), "nothing committed yet")
		_, err := conn.ExecContext(ctx, "COMMIT", nil)
		require.NoError(t, err)
		assert.Equal(t, "query "+insertLSNQuery, n.Recorded()[len(n.Recorded())-1], "after the COMMIT the floor is read")
		assert.False(t, sess.get().zero(), "the COMMIT raised the floor")
	})
}

// A prepared statement executed on a connection it was not prepared on
// prepares there first; when that PREPARE breaks the connection, nothing
// that may write was sent: no ErrCommitUnknown, and the primary session,
// which had served nothing, is dialed again and the statement runs.
func TestAttemptStmtPrepareInsideExec(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, n := staticFake(t, "")
		conn := logical(t, c)
		st, err := conn.PrepareContext(WithMode(t.Context(), ReadOnly), "INSERT INTO t VALUES (1)")
		require.NoError(t, err) // on the read-only fallback session
		n.Record()
		n.On(fakepg.Prepare, fakepg.BreakAfterSend())
		_, err = st.(driver.StmtExecContext).ExecContext(t.Context(), nil)
		require.NoError(t, err, "the PREPARE broke an unused session: dialed again")
		assert.Equal(t, 1, countPrefix(n.Recorded(), "exec INSERT"), "the INSERT ran once: %q", n.Recorded())
		assert.True(t, conn.IsValid())
	})
}

// countPrefix counts the entries of rec that begin with p.
func countPrefix(rec []string, p string) int {
	k := 0
	for _, s := range rec {
		if strings.HasPrefix(s, p) {
			k++
		}
	}
	return k
}

// A statement the server ran and answered with an error may have left
// state in the session (the first of several statements took a lock): the
// session is the user's from then on, and losing it later finishes the
// logical connection, as a pgx connection fails, instead of the next
// statement running on a new session that holds no lock.
func TestAttemptSessionUsedByAFailedStatement(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, n := staticFake(t, "")
		conn := logical(t, c)
		n.On(fakepg.Exec, fakepg.ServerError("22012"))
		_, err := conn.ExecContext(t.Context(), "SELECT pg_advisory_lock(1); SELECT 1/0", nil)
		require.Error(t, err)
		n.On(fakepg.Exec, fakepg.BadConn()) // the session is lost while idle
		_, err = conn.ExecContext(t.Context(), "SELECT pg_advisory_unlock(1)", nil)
		assert.ErrorIs(t, err, driver.ErrBadConn)
		assert.Equal(t, 1, n.Dials(), "no new session under the user's statements")
	})
}

// Under least-rtt a read session that ran on a far replica, because its
// read broke on the near one and ran again there, goes back to the near
// one at its next statement. It used to stay on the far replica until the
// next change of eligibility or nearness, which may never come: under a
// loaded client the netns test saw a tenth of the reads on a 200 ms link.
func TestLeastRTTSessionLeavesFarReplica(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_health_timeout=500ms&unified_replica_policy=least-rtt")
		require.True(t, c.Health(t.Context()).Readable)
		nodes[2].Set(func(s *fakepg.State) { s.Delay = 20 * time.Millisecond }) // n2 far, n1 near
		time.Sleep(3 * time.Second)
		synctest.Wait()
		require.True(t, c.viewNow().far[2], "n2 is far")
		conn := logical(t, c)
		readOn(t, conn)
		require.Equal(t, 1, nodes[1].Sent(fakepg.Query), "least-rtt picks the near replica")
		nodes[1].On(fakepg.Query, fakepg.BreakAfterSend())
		readOn(t, conn)
		require.Equal(t, 1, nodes[2].Sent(fakepg.Query), "the broken read ran again on the far replica")
		for range 5 {
			readOn(t, conn)
		}
		assert.Equal(t, 1, nodes[2].Sent(fakepg.Query), "no more reads on the far replica")
		assert.Equal(t, 2+5, nodes[1].Sent(fakepg.Query), "back on the near one at the next statement")
		require.NoError(t, conn.Close())
		require.NoError(t, c.Close())
	})
}

// A session read stays on the far replica while only that one has
// replayed its floor: moving it back at every statement would dial the
// near replica, find the floor not replayed there, and dial the far one
// again, two dials a read.
func TestLeastRTTSessionFloorStaysOnFarReplica(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// No lag bounds: the near replica stays eligible below the floor.
		c, nodes := belowFloor(t, "&unified_replica_policy=least-rtt&unified_max_replica_lag=0s&unified_max_replica_lag_bytes=0")
		nodes[2].Set(func(s *fakepg.State) { s.Delay = 20 * time.Millisecond }) // n2 far, n1 near
		time.Sleep(3 * time.Second)
		synctest.Wait()
		replayedBy(nodes, 2) // only the far replica has the write
		require.True(t, replicaEligible(c.viewNow().s, 1), "n1 is eligible, below the floor")
		require.True(t, c.viewNow().far[2], "n2 is far")
		sess := &Session{floor: floor{lsn: 200, timeline: 1}}
		ctx := WithSession(WithMode(t.Context(), ReadOnly), sess)
		conn := logical(t, c)
		read := func() {
			rows, err := conn.QueryContext(ctx, "SELECT 1", nil)
			require.NoError(t, err)
			require.NoError(t, rows.Close())
		}
		read()
		require.Equal(t, 1, nodes[2].Sent(fakepg.Query), "the far replica has replayed the floor")
		dials1, dials2 := nodes[1].Dials(), nodes[2].Dials()
		for range 5 {
			read()
		}
		assert.Equal(t, 6, nodes[2].Sent(fakepg.Query), "every session read on the far replica")
		assert.Equal(t, dials1, nodes[1].Dials(), "no dial to the near replica, which lacks the floor")
		assert.Equal(t, dials2, nodes[2].Dials(), "no dial again to the far one")
		near := nodes[1].Sent(fakepg.Query)
		readOn(t, conn) // no floor: back to the near replica
		assert.Equal(t, 6, nodes[2].Sent(fakepg.Query))
		assert.Equal(t, near+1, nodes[1].Sent(fakepg.Query))
		require.NoError(t, conn.Close())
		require.NoError(t, c.Close())
	})
}
