package fakepg_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/internal/classify"
	"github.com/unifiedsql/unified/internal/fakepg"
	"github.com/unifiedsql/unified/internal/pgprobe"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRoundTrip(t *testing.T) {
	n := &fakepg.Node{}
	db := sql.OpenDB(n)
	defer db.Close()
	ctx := context.Background()

	res, err := db.ExecContext(ctx, "INSERT INTO t VALUES ($1)", 7)
	require.NoError(t, err)
	affected, _ := res.RowsAffected()
	assert.EqualValues(t, 1, affected)

	var v int64
	require.NoError(t, db.QueryRowContext(ctx, "SELECT v", 7).Scan(&v))
	assert.EqualValues(t, 1, v)
	rows, err := db.QueryContext(ctx, "SELECT v")
	require.NoError(t, err)
	count := 0
	for rows.Next() {
		count++
	}
	require.NoError(t, rows.Close())
	assert.Equal(t, 1, count)

	st, err := db.PrepareContext(ctx, "UPDATE t SET v = $1")
	require.NoError(t, err)
	_, err = st.ExecContext(ctx, 1)
	require.NoError(t, err)
	require.NoError(t, st.QueryRowContext(ctx).Scan(&v))
	require.NoError(t, st.Close())

	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	_, err = tx.ExecContext(ctx, "DELETE FROM t")
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	require.NoError(t, db.PingContext(ctx))

	assert.GreaterOrEqual(t, n.Dials(), 1)
	for k, want := range map[fakepg.Kind]int{fakepg.Exec: 3, fakepg.Query: 3, fakepg.Prepare: 1, fakepg.Begin: 1,
		fakepg.Commit: 1, fakepg.Ping: 1, fakepg.Any: 10, fakepg.Probe: 0} {
		assert.Equal(t, want, n.Sent(k), "%s", k)
	}
}

func TestProbe(t *testing.T) {
	n := fakepg.New(fakepg.State{InRecovery: true, LSN: 0x1_0000_0010, Timeline: 3})
	dc, err := n.Connect(t.Context())
	require.NoError(t, err)
	defer dc.Close()
	res, err := pgprobe.Run(t.Context(), dc.(driver.QueryerContext))
	require.NoError(t, err)
	assert.Equal(t, pgprobe.Result{InRecovery: true, LSN: 0x1_0000_0010, Timeline: 3}, res)

	n.Set(func(s *fakepg.State) { s.InRecovery, s.Timeline = false, 4 })
	res, err = pgprobe.Run(t.Context(), dc.(driver.QueryerContext))
	require.NoError(t, err)
	assert.False(t, res.InRecovery)
	assert.EqualValues(t, 4, res.Timeline)
	assert.Len(t, n.ProbeTimes(), 2)
	assert.Equal(t, 2, n.Sent(fakepg.Probe))
	assert.Equal(t, 0, n.Sent(fakepg.Any), "probes are not statements")
}

// fakeConn is what a connection offers: database/sql's interfaces, and
// what pgx tells through *stdlib.Conn.
type fakeConn interface {
	driver.Conn
	driver.ExecerContext
	driver.QueryerContext
	driver.ConnBeginTx
	IsClosed() bool
	IsBusy() bool
	Interrupt()
}

// conn opens one connection to n, closed when the test ends.
func conn(t *testing.T, n *fakepg.Node) fakeConn {
	t.Helper()
	dc, err := n.Connect(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { dc.Close() })
	return dc.(fakeConn)
}

func TestHooks(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name   string
		fault  fakepg.Fault
		sent   int
		closed bool
		class  classify.Class
		check  func(t *testing.T, err error)
	}{
		{"bad conn: not sent", fakepg.BadConn(), 0, true, classify.Connection,
			func(t *testing.T, err error) { assert.ErrorIs(t, err, driver.ErrBadConn) }},
		{"safe to retry: not sent", fakepg.SafeToRetry(), 0, true, classify.Connection,
			func(t *testing.T, err error) { assert.True(t, pgconn.SafeToRetry(err)) }},
		{"break after send", fakepg.BreakAfterSend(), 1, true, classify.Connection,
			func(t *testing.T, err error) { assert.ErrorIs(t, err, io.ErrUnexpectedEOF) }},
		{"server error", fakepg.ServerError("40001"), 1, false, classify.Serialization, nil},
		{"fatal", fakepg.Fatal("57P01"), 1, true, classify.AdminShutdown, nil},
		{"fail", fakepg.Fail(errors.New("boom")), 1, false, classify.Other,
			func(t *testing.T, err error) { assert.EqualError(t, err, "boom") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &fakepg.Node{}
			c := conn(t, n)
			n.On(fakepg.Exec, tc.fault)
			_, err := c.ExecContext(ctx, "INSERT", nil)
			require.Error(t, err)
			assert.Equal(t, tc.class, classify.Of(ctx, err))
			assert.Equal(t, tc.sent == 0, classify.NotSent(err))
			assert.Equal(t, tc.sent, n.Sent(fakepg.Exec))
			assert.Equal(t, tc.closed, c.IsClosed())
			if tc.check != nil {
				tc.check(t, err)
			}
			if !tc.closed {
				_, err = c.ExecContext(ctx, "INSERT", nil)
				assert.NoError(t, err, "a hook fires once")
			}
		})
	}
}

func TestHookOrderAndKinds(t *testing.T) {
	ctx := t.Context()
	n := &fakepg.Node{}
	n.Record()
	c := conn(t, n)
	n.On(fakepg.Commit, fakepg.BreakAfterSend())
	n.On(fakepg.Any, fakepg.ServerError("23505"))
	_, err := c.ExecContext(ctx, "INSERT 1", nil)
	assert.Equal(t, "23505", classify.SQLState(err), "Any matches an Exec; the Commit hook waits for a COMMIT")
	tx, err := c.BeginTx(ctx, driver.TxOptions{})
	require.NoError(t, err)
	assert.ErrorIs(t, tx.Commit(), io.ErrUnexpectedEOF)
	assert.True(t, c.IsClosed())
	assert.Equal(t, []string{"exec INSERT 1", "begin", "commit"}, n.Recorded())
}

func TestBreakRowsAfter(t *testing.T) {
	ctx := t.Context()
	for _, after := range []int{0, 2} {
		n := &fakepg.Node{}
		c := conn(t, n)
		n.On(fakepg.Query, fakepg.BreakRowsAfter(after))
		r, err := c.QueryContext(ctx, "SELECT", nil)
		require.NoError(t, err)
		assert.True(t, c.IsBusy())
		_, err = c.ExecContext(ctx, "INSERT", nil)
		assert.ErrorIs(t, err, fakepg.ErrBusy, "rows open: conn busy")
		assert.True(t, classify.NotSent(err))
		dest := make([]driver.Value, 1)
		for i := 0; i < after; i++ {
			require.NoError(t, r.Next(dest), "row %d", i)
		}
		assert.ErrorIs(t, r.Next(dest), io.ErrUnexpectedEOF)
		assert.True(t, c.IsClosed())
		assert.False(t, c.IsBusy())
		assert.ErrorIs(t, r.Close(), io.ErrUnexpectedEOF, "Close says it again, as pgx's rows do")
	}
}

func TestHangEndsWithContextOrInterrupt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := &fakepg.Node{}
		c := conn(t, n)
		n.On(fakepg.Exec, fakepg.Hang())
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.ExecContext(ctx, "INSERT", nil)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, time.Second, time.Since(start))
		assert.True(t, c.IsClosed(), "canceled mid-statement: closed, as pgx does")

		c = conn(t, n)
		_, err = c.ExecContext(ctx, "INSERT", nil)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.True(t, classify.NotSent(err), "a context already done: nothing sent, as pgx")
		assert.False(t, c.IsClosed())

		c = conn(t, n)
		n.On(fakepg.Exec, fakepg.Hang())
		go func() {
			time.Sleep(time.Second)
			c.Interrupt()
		}()
		_, err = c.ExecContext(t.Context(), "INSERT", nil)
		assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	})
}

func TestDownAndHung(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		n := &fakepg.Node{}
		c := conn(t, n)
		n.Set(func(s *fakepg.State) { s.Down = true })
		assert.True(t, c.IsClosed(), "going down breaks the open connections")
		_, err := c.ExecContext(ctx, "INSERT", nil)
		assert.ErrorIs(t, err, driver.ErrBadConn)
		_, err = n.Connect(ctx)
		assert.ErrorIs(t, err, fakepg.ErrRefused)
		assert.Equal(t, 2, n.Dials())

		n.Set(func(s *fakepg.State) { s.Down = false })
		c = conn(t, n)
		n.Set(func(s *fakepg.State) { s.Hung = true })
		done := make(chan error)
		go func() {
			_, err := c.ExecContext(ctx, "INSERT", nil)
			done <- err
		}()
		time.Sleep(time.Minute)
		synctest.Wait()
		assert.Equal(t, 1, n.Sent(fakepg.Exec), "reached the node, no answer")
		n.Set(func(s *fakepg.State) { s.Hung = false })
		assert.NoError(t, <-done, "answered once the node resumes")

		n.Set(func(s *fakepg.State) { s.Delay = time.Second })
		start := time.Now()
		_, err = c.ExecContext(ctx, "INSERT", nil)
		assert.NoError(t, err)
		assert.Equal(t, time.Second, time.Since(start), "answered after the delay")
		short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancelShort()
		_, err = c.ExecContext(short, "INSERT", nil)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		n.Set(func(s *fakepg.State) { s.Delay = 0 })

		n.On(fakepg.Connect, fakepg.Hang())
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err = n.Connect(dctx)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	})
}
