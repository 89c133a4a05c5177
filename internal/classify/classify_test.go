package classify

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func pgErr(code string) *pgconn.PgError {
	return &pgconn.PgError{Severity: "ERROR", Code: code, Message: "message text is never read"}
}

func opErr(errno syscall.Errno) *net.OpError {
	return &net.OpError{
		Op:   "read",
		Net:  "tcp",
		Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5432},
		Err:  os.NewSyscallError("read", errno),
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// stateErr is another driver's server error: only a SQLState method.
type stateErr string

func (e stateErr) Error() string    { return "server error" }
func (e stateErr) SQLState() string { return string(e) }

func doneCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func expiredCtx() context.Context {
	ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
	cancel() // keeps ctx.Err() == DeadlineExceeded: the deadline came first
	return ctx
}

// refusedConnectErr is a real *pgconn.ConnectError: a dial to a port nothing
// listens on.
func refusedConnectErr(t *testing.T) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().(*net.TCPAddr)
	require.NoError(t, ln.Close())
	_, err = pgconn.Connect(context.Background(), connString(addr.Port))
	require.Error(t, err)
	return err
}

// connString is a connection string to a fake server on 127.0.0.1:port.
func connString(port int) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=u sslmode=disable connect_timeout=5", port)
}

// serveOnce listens on a loopback port, and in a goroutine accepts one
// connection and runs serve on it (with a 5 s deadline) as a PostgreSQL
// backend; done is closed when serve has returned. The caller closes ln.
func serveOnce(t *testing.T, serve func(c net.Conn, be *pgproto3.Backend)) (ln net.Listener, port int, done <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		serve(c, pgproto3.NewBackend(c, c))
	}()
	return ln, ln.Addr().(*net.TCPAddr).Port, ch
}

// refusingServerConnectErr is a real *pgconn.ConnectError wrapping the
// *pgconn.PgError a server sends in answer to the startup message.
func refusingServerConnectErr(t *testing.T, code string) error {
	t.Helper()
	ln, port, done := serveOnce(t, func(c net.Conn, be *pgproto3.Backend) {
		for {
			msg, err := be.ReceiveStartupMessage()
			if err != nil {
				return
			}
			switch msg.(type) {
			case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
				if _, err := c.Write([]byte{'N'}); err != nil {
					return
				}
				continue
			}
			break
		}
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: code, Message: "refused"})
		_ = be.Flush()
	})
	_, err := pgconn.Connect(context.Background(), connString(port))
	require.NoError(t, ln.Close())
	<-done
	require.Error(t, err)
	var ce *pgconn.ConnectError
	require.ErrorAs(t, err, &ce)
	return err
}

func TestOf(t *testing.T) {
	bg := context.Background()
	refused := refusedConnectErr(t)
	authConnect := refusingServerConnectErr(t, "28P01")
	tooManyConnect := refusingServerConnectErr(t, "53300")
	startingConnect := refusingServerConnectErr(t, "57P03")
	noDBConnect := refusingServerConnectErr(t, "3D000")

	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want Class
	}{
		{"nil", bg, nil, None},
		{"nil error with done ctx", doneCtx(), nil, None},

		{"canceled ctx, context error", doneCtx(), context.Canceled, Canceled},
		{"canceled ctx, connection error", doneCtx(), io.ErrUnexpectedEOF, Canceled},
		{"canceled ctx, server error 57014", doneCtx(), pgErr("57014"), Canceled},
		{"canceled ctx, read only", doneCtx(), pgErr("25006"), Canceled},
		{"expired ctx, deadline error", expiredCtx(), context.DeadlineExceeded, Canceled},
		{"expired ctx, net timeout", expiredCtx(), &net.OpError{Op: "read", Err: timeoutErr{}}, Canceled},

		{"deadline while ctx live is our own timeout", bg, context.DeadlineExceeded, Connection},
		{"wrapped deadline while ctx live", bg, fmt.Errorf("probe: %w", context.DeadlineExceeded), Connection},
		{"deadline with nil ctx", nil, context.DeadlineExceeded, Connection},
		{"net timeout while ctx live", bg, &net.OpError{Op: "read", Err: timeoutErr{}}, Connection},
		{"os deadline", bg, os.ErrDeadlineExceeded, Connection},
		{"canceled while ctx live", bg, context.Canceled, Other},
		{"canceled with nil ctx", nil, fmt.Errorf("x: %w", context.Canceled), Other},

		{"connect refused", bg, refused, Connection},
		{"connect error wrapped", bg, fmt.Errorf("dial: %w", refused), Connection},
		{"connect error wrapping unlisted server error", bg, noDBConnect, Connection},
		{"net op error reset", bg, opErr(syscall.ECONNRESET), Connection},
		{"net op error refused", bg, opErr(syscall.ECONNREFUSED), Connection},
		{"bare ECONNRESET", bg, syscall.ECONNRESET, Connection},
		{"bare EPIPE", bg, fmt.Errorf("write: %w", syscall.EPIPE), Connection},
		{"dns error", bg, &net.DNSError{Err: "no such host", Name: "db1"}, Connection},
		{"io.EOF", bg, io.EOF, Connection},
		{"unexpected EOF wrapped", bg, fmt.Errorf("receive message failed: %w", io.ErrUnexpectedEOF), Connection},
		{"net.ErrClosed", bg, fmt.Errorf("read: %w", net.ErrClosed), Connection},
		{"driver.ErrBadConn", bg, driver.ErrBadConn, Connection},
		{"pgconn.ErrConnClosed", bg, fmt.Errorf("exec: %w", pgconn.ErrConnClosed), Connection},
		{"08006 connection_failure", bg, pgErr("08006"), Connection},
		{"08P01 protocol_violation", bg, fmt.Errorf("x: %w", pgErr("08P01")), Connection},

		{"25006 read only", bg, pgErr("25006"), ReadOnly},
		{"25006 wrapped", bg, fmt.Errorf("exec: %w", pgErr("25006")), ReadOnly},
		{"25006 from another driver", bg, stateErr("25006"), ReadOnly},

		{"57P01 admin shutdown", bg, pgErr("57P01"), AdminShutdown},
		{"57P02 crash shutdown", bg, pgErr("57P02"), AdminShutdown},
		{"57P03 cannot connect now", bg, pgErr("57P03"), AdminShutdown},
		{"57P03 inside connect error", bg, startingConnect, AdminShutdown},

		{"53300", bg, pgErr("53300"), TooManyConnections},
		{"53300 inside connect error", bg, tooManyConnect, TooManyConnections},

		{"28000", bg, pgErr("28000"), Auth},
		{"28P01", bg, pgErr("28P01"), Auth},
		{"28P01 inside connect error", bg, authConnect, Auth},

		{"40001", bg, pgErr("40001"), Serialization},
		{"40001 wrapped twice", bg, fmt.Errorf("a: %w", fmt.Errorf("b: %w", pgErr("40001"))), Serialization},
		{"40P01", bg, pgErr("40P01"), Deadlock},

		{"23505 unique violation", bg, pgErr("23505"), SQL},
		{"42601 syntax", bg, pgErr("42601"), SQL},
		{"57014 statement timeout while ctx live", bg, pgErr("57014"), SQL},
		{"sqlstate from another driver", bg, stateErr("23505"), SQL},

		{"plain error", bg, errors.New("connection reset by peer"), Other},
		{"sql.ErrConnDone", bg, sql.ErrConnDone, Other},
		{"sql.ErrNoRows", bg, sql.ErrNoRows, Other},
		{"empty sqlstate", bg, stateErr(""), Other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Of(tt.ctx, tt.err)
			assert.Equal(t, tt.want, got, "Of(%v) = %v, want %v", tt.err, got, tt.want)
		})
	}
}

func TestClassPredicates(t *testing.T) {
	tests := []struct {
		class                           Class
		name                            string
		nodeFault, lostPrimary, retryTx bool
	}{
		{None, "none", false, false, false},
		{Canceled, "canceled", false, false, false},
		{Connection, "connection", true, true, false},
		{ReadOnly, "read_only", false, true, false},
		{AdminShutdown, "admin_shutdown", true, true, false},
		{TooManyConnections, "too_many_connections", true, false, false},
		{Auth, "auth", true, false, false},
		{Serialization, "serialization", false, false, true},
		{Deadlock, "deadlock", false, false, true},
		{SQL, "sql", false, false, false},
		{Other, "other", false, false, false},
		{Class(200), "Class(200)", false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.name, tt.class.String())
			assert.Equal(t, tt.nodeFault, tt.class.NodeFault(), "NodeFault")
			assert.Equal(t, tt.lostPrimary, tt.class.LostPrimary(), "LostPrimary")
			assert.Equal(t, tt.retryTx, tt.class.RetryTx(), "RetryTx")
		})
	}
}

// realClosedConnErr is the error pgconn returns for an operation on a
// connection it has already closed.
func realClosedConnErr(t *testing.T) error {
	t.Helper()
	ln, port, done := serveOnce(t, func(_ net.Conn, be *pgproto3.Backend) {
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return
		}
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if err := be.Flush(); err != nil {
			return
		}
		// Wait for the client's Terminate or EOF.
		_, _ = be.Receive()
	})
	defer ln.Close()
	conn, err := pgconn.Connect(context.Background(), connString(port))
	require.NoError(t, err)
	require.NoError(t, conn.Close(context.Background()))
	<-done
	err = conn.Exec(context.Background(), "SELECT 1").Close()
	require.Error(t, err)
	return err
}

func TestRealPgconnErrors(t *testing.T) {
	closed := realClosedConnErr(t)
	assert.Equal(t, Connection, Of(context.Background(), closed))
	assert.True(t, NotSent(closed), "an operation on a closed conn sends nothing")

	refused := refusedConnectErr(t)
	assert.Equal(t, Connection, Of(context.Background(), refused))
	assert.True(t, NotSent(refused))
	assert.Equal(t, "", SQLState(refused))

	auth := refusingServerConnectErr(t, "28P01")
	assert.Equal(t, "28P01", SQLState(auth))
	assert.True(t, NotSent(auth))
}

func TestNotSent(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"ErrBadConn", driver.ErrBadConn, true},
		{"ErrBadConn wrapped", fmt.Errorf("x: %w", driver.ErrBadConn), true},
		{"connect error", refusedConnectErr(t), true},
		{"unexpected EOF may have been sent", io.ErrUnexpectedEOF, false},
		{"reset may have been sent", opErr(syscall.ECONNRESET), false},
		{"server error", pgErr("23505"), false},
		{"deadline", context.DeadlineExceeded, false},
		{"safe to retry marker", safeErr{true}, true},
		{"unsafe marker", safeErr{false}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, NotSent(tt.err))
		})
	}
}

type safeErr struct{ safe bool }

func (e safeErr) Error() string     { return "safe" }
func (e safeErr) SafeToRetry() bool { return e.safe }

func TestSQLState(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"plain", errors.New("x"), ""},
		{"pg error", pgErr("40001"), "40001"},
		{"wrapped", fmt.Errorf("a: %w", pgErr("25006")), "25006"},
		{"joined", errors.Join(errors.New("a"), pgErr("40P01")), "40P01"},
		{"other driver", stateErr("53300"), "53300"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, SQLState(tt.err))
		})
	}
}
