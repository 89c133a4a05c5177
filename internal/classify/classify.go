// Package classify sorts the errors of a PostgreSQL connection into the few
// classes the driver acts on: which failures count against a node's circuit
// breaker, which suggest the primary has moved, which let a whole transaction
// be re-run, and which provably never reached the server.
//
// Classification uses SQLSTATE codes, error types and sentinel values
// (errors.Is, errors.As) only; it never looks at message text, which is
// localized by the server and reworded by drivers.
//
// # Order
//
// [Of] decides in this order, first match wins:
//
//  1. err == nil: [None].
//  2. The caller's context is done: [Canceled], whatever err says. A
//     cancellation interrupts a healthy node as readily as a sick one, so it
//     is never a node fault.
//  3. A SQLSTATE with a class of its own (25006, 57P01-57P03, 53300, 28000,
//     28P01, 40001, 40P01, 08xxx). This is checked before the connection
//     checks because pgx wraps a server's refusal (bad password, too many
//     connections, shutting down) in a [*pgconn.ConnectError].
//  4. [context.Canceled] while the caller's context is not done (or is nil):
//     [Other]. Something other than the caller (a monitor shutting down, a
//     derived context) stopped the operation; the node did nothing wrong.
//  5. A connection failure: [Connection]. This includes
//     [context.DeadlineExceeded] and net timeouts while the caller's context
//     is not done, which is how the driver's own probe and dial timeouts show
//     up: a hung node (TCP open, nothing answering) is a node fault.
//  6. Any other error carrying a SQLSTATE: [SQL].
//  7. Anything else: [Other].
//
// A [*pgconn.ConnectError] wrapping a server error with an unlisted SQLSTATE
// (3D000 database does not exist, 42501 no CONNECT privilege) is
// [Connection], not [SQL]: the node cannot serve connections.
//
// The SQLSTATE is taken from any error in the chain with a SQLState() string
// method, which covers [*pgconn.PgError] and lets other drivers (a test's
// go-sqlmock node, for example) report classes the same way.
//
// All functions are pure and safe for concurrent use.
package classify

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strconv"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Class is the kind of an error, as far as routing, retrying and circuit
// breaking care. The zero value, None, is the class of a nil error.
type Class uint8

const (
	// None: err == nil.
	None Class = iota
	// Canceled: the caller's context is done (ctx.Err() != nil), whatever the
	// error says. Never a node fault.
	Canceled
	// Connection: the connection could not be made, or broke: a
	// *pgconn.ConnectError, a net.Error (timeouts included while the caller's
	// context is not done), io.EOF, io.ErrUnexpectedEOF, net.ErrClosed,
	// ECONNRESET, ECONNREFUSED, EPIPE, driver.ErrBadConn,
	// pgconn.ErrConnClosed, or a SQLSTATE of class 08.
	Connection
	// ReadOnly: 25006 read_only_sql_transaction, a write sent to a node in
	// recovery or to a read-only transaction.
	ReadOnly
	// AdminShutdown: 57P01 admin_shutdown, 57P02 crash_shutdown,
	// 57P03 cannot_connect_now.
	AdminShutdown
	// TooManyConnections: 53300 too_many_connections.
	TooManyConnections
	// Auth: 28000 invalid_authorization_specification,
	// 28P01 invalid_password.
	Auth
	// Serialization: 40001 serialization_failure (also raised on a standby
	// for a query cancelled by a recovery conflict).
	Serialization
	// Deadlock: 40P01 deadlock_detected.
	Deadlock
	// SQL: any other error reported by the server.
	SQL
	// Other: anything else (driver misuse, type conversion, ...).
	Other
)

var classNames = [...]string{
	None:               "none",
	Canceled:           "canceled",
	Connection:         "connection",
	ReadOnly:           "read_only",
	AdminShutdown:      "admin_shutdown",
	TooManyConnections: "too_many_connections",
	Auth:               "auth",
	Serialization:      "serialization",
	Deadlock:           "deadlock",
	SQL:                "sql",
	Other:              "other",
}

// String returns the class in snake_case ("read_only"), suitable as a log
// field or a metric attribute value.
func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// NodeFault reports whether the error counts against the node's circuit
// breaker: Connection, AdminShutdown, TooManyConnections and Auth. Caller
// cancellations and SQL errors (constraint, syntax, serialization) do not.
func (c Class) NodeFault() bool {
	switch c {
	case Connection, AdminShutdown, TooManyConnections, Auth:
		return true
	}
	return false
}

// LostPrimary reports whether a primary returning this error may no longer
// be the primary, so the topology should be re-probed at once: Connection,
// ReadOnly and AdminShutdown.
func (c Class) LostPrimary() bool {
	switch c {
	case Connection, ReadOnly, AdminShutdown:
		return true
	}
	return false
}

// RetryTx reports whether the whole transaction may be run again from its
// start: Serialization and Deadlock. The server rolled the transaction back,
// so nothing of it was committed.
func (c Class) RetryTx() bool {
	return c == Serialization || c == Deadlock
}

// Of returns the class of err. ctx is the caller's context for the operation
// that failed; it may be nil, in which case cancellation cannot be told apart
// from other failures (see the package documentation for the order of the
// checks).
func Of(ctx context.Context, err error) Class {
	if err == nil {
		return None
	}
	if ctx != nil && ctx.Err() != nil {
		return Canceled
	}
	code := SQLState(err)
	if c, ok := classOfCode(code); ok {
		return c
	}
	if errors.Is(err, context.Canceled) {
		return Other
	}
	if isConnection(err) {
		return Connection
	}
	if code != "" {
		return SQL
	}
	return Other
}

// classOfCode maps the SQLSTATEs that have a class of their own.
func classOfCode(code string) (Class, bool) {
	switch code {
	case "":
		return None, false
	case "25006":
		return ReadOnly, true
	case "57P01", "57P02", "57P03":
		return AdminShutdown, true
	case "53300":
		return TooManyConnections, true
	case "28000", "28P01":
		return Auth, true
	case "40001":
		return Serialization, true
	case "40P01":
		return Deadlock, true
	}
	if len(code) == 5 && code[:2] == "08" {
		return Connection, true
	}
	return None, false
}

func isConnection(err error) bool {
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	switch {
	case errors.Is(err, driver.ErrBadConn),
		errors.Is(err, pgconn.ErrConnClosed),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, context.DeadlineExceeded):
		return true
	}
	// Every net.Error: *net.OpError, *net.DNSError, os.ErrDeadlineExceeded,
	// timeouts or not.
	var netErr net.Error
	return errors.As(err, &netErr)
}

// NotSent reports whether err provably happened before anything of the
// statement reached the server, so sending it again cannot run it twice:
// driver.ErrBadConn (which drivers return only in that case), an error pgconn
// marks safe to retry, or a failed connection attempt.
func NotSent(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, driver.ErrBadConn) || pgconn.SafeToRetry(err) {
		return true
	}
	var connectErr *pgconn.ConnectError
	return errors.As(err, &connectErr)
}

// SQLState returns the SQLSTATE of the first error in err's chain that has
// one (a *pgconn.PgError, or any error with a SQLState() string method), or
// "" if none does.
func SQLState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	var stateErr interface{ SQLState() string }
	if errors.As(err, &stateErr) {
		return stateErr.SQLState()
	}
	return ""
}
