// Package unified is a database/sql driver for PostgreSQL that turns a list
// of hosts (one primary, streaming replicas) into one [*sql.DB] with high
// availability. It finds the primary, routes every statement by an access
// mode carried in its [context.Context], follows a failover when a replica is
// promoted, and retries only what is safe. Physical connections are pgx v5
// (github.com/jackc/pgx/v5/stdlib), so every pgx type works as with
// sql.Open("pgx", ...).
//
// # Quick start
//
// Code that already uses *sql.DB changes one word:
//
//	db, err := sql.Open("unified", "postgres://app@db1:5432,db2:5432,db3:5432/app")
//	// Without a mode: the primary, exactly as pgx would.
//	_, err = db.ExecContext(ctx, "INSERT INTO t VALUES ($1)", 1)
//	// With ReadOnly: a replica.
//	rows, err := db.QueryContext(unified.WithMode(ctx, unified.ReadOnly), "SELECT * FROM t")
//
// # DSN
//
// The DSN is a pgx/libpq connection string, URL or keyword/value, with one or
// more hosts, plus unified_* parameters that are removed before pgx sees the
// rest (see [ParseConfig] and the README's table). target_session_attrs is
// honoured as the default mode and never passed to pgx: unified routes per
// statement instead of checking once per connection. Instead of a DSN,
// sql.Open accepts the name of a configuration stored with [Register].
//
// # Modes
//
// A statement's mode is read from its context ([WithMode], [ModeFrom]); a
// context without one runs in [Config.DefaultMode]. Inside a transaction
// every statement runs on the transaction's connection, whatever its own
// context says.
//
//   - [ReadWrite] (the default): the primary, exactly as pgx stdlib. Retried
//     only when nothing reached the server. During a failover it waits for
//     the new primary within its context deadline.
//   - [ReadOnly]: an eligible replica (up, breaker closed, within
//     unified_max_replica_lag and unified_max_replica_lag_bytes), chosen by
//     unified_replica_policy when the logical connection opens its read
//     connection, and kept while it stays eligible. With no eligible replica
//     it runs on the primary (unified_read_fallback=primary) or fails with
//     [ErrNoReplica] (=error). Read sessions are read-only
//     (default_transaction_read_only=on, or SET SESSION CHARACTERISTICS for
//     a [WithNodeConnector] driver), so a write sent in this mode fails with
//     the server's SQLSTATE 25006 and never silently runs on the primary. A
//     read whose node fails it outside a transaction before any row reached
//     the caller is re-run on another node. The read session is the
//     driver's: it may move to another replica between statements, so
//     session state set in this mode (SET, temporary tables) is not kept.
//     BeginTx with a ReadOnly context begins the transaction on a replica;
//     sql.TxOptions{ReadOnly: true} without a mode is a read-only
//     transaction on the primary session, exactly as with pgx.
//   - [Batch]: the primary, admitted through a bulkhead of
//     unified_max_batch_conns statements (or transactions) at once, waiting
//     within the context for a slot, so bulk work cannot take every
//     connection. Not retried.
//   - [Transactional]: the primary, inside a transaction only: a statement
//     outside one fails with [ErrNotInTransaction]. [RunTx] runs a function
//     in a transaction and re-runs it when PostgreSQL rolled it back
//     (serialization failure, deadlock, connection lost before COMMIT),
//     never after a COMMIT of unknown outcome.
//
// # Connections
//
// database/sql pools logical connections ([Conn]). A logical connection
// holds at most two physical pgx connections, opened on first need: one to
// the primary and one for reads. Code that sets no mode opens only primary
// connections, so session state (SET, temporary tables, advisory locks,
// [sql.Conn]) behaves as with pgx stdlib. Pool settings keep their meaning
// per role: SetMaxOpenConns(10) allows up to 10 primary and 10 read
// connections. With sql.Open, database/sql owns the pool: call db.Set*; with
// [OpenDB], the unified_max_open_conns family of parameters is applied.
//
// The primary session is the user's: once it has served a statement it is
// never replaced, as with pgx. Before every statement the logical
// connection checks it against the current topology snapshot (one atomic
// load) and, after a millisecond of idleness, its socket (a session the
// server closed, or sent a FATAL error to, is gone; a NOTIFY is not a sign
// of that). When the session is lost or its node is no longer the primary,
// the logical connection is finished: every later call returns
// driver.ErrBadConn before anything is sent, and database/sql discards it
// and moves pooled calls to another connection, which waits for the new
// primary. A [sql.Conn] or [sql.Tx] caller gets the error, as with pgx. No
// write reaches a demoted node.
//
// Use (*sql.Conn).Raw and [Conn.StdlibConn] to reach pgx-only features such
// as CopyFrom.
//
// # Topology and health
//
// Each [Connector] runs one health monitor from its first connection until
// Close. Every unified_health_interval it probes each node in parallel on a
// dedicated connection, in one round trip (role, WAL position, timeline),
// and publishes an immutable snapshot. A probe waits 20 times the node's
// usual round trip (at least 50 ms, at most unified_health_timeout); a
// timeout marks the node down once confirmed (a probe with three times the
// deadline timed out too while another node answered promptly, or a last
// probe with the full timeout timed out too; only the latter while the
// client's own CPUs are saturated), and a node
// with a statement stalled on it is probed out of turn. Statements in
// flight on a node that went down are interrupted. The
// first snapshot is published once every node has answered its first probe
// or timed out: before that the election could be overturned, so nothing
// is routed. When a statement on the primary fails in a way that says the
// primary may be gone, the monitor re-probes every few milliseconds while
// any write waits; each write waits up to unified_failover_timeout from
// when it began waiting, within its context deadline, and goes out on one
// of the new primary's warm spares (unified_warm_spares idle sessions kept
// open to each replica) when one is left. Before any primary
// has been seen (a wrong DSN, a cluster with no primary) a write fails with
// [ErrNoPrimary] after the first probe round instead of waiting.
//
// # Errors and retries
//
// A statement is retried automatically only when nothing reached the server
// (a failed dial, or what pgx reports as safe to retry), or when it is a
// ReadOnly read outside a transaction that lost its connection: it re-runs
// on another node. When the connection breaks after a COMMIT, or an
// autocommit statement on the primary, was sent, the error wraps
// [ErrCommitUnknown]: the write may have been committed and was not re-sent;
// so does an error while reading the rows of such a statement. What a
// server answered is returned as pgx returns it (a *pgconn.PgError, not
// wrapped). The driver's own errors about one node (a failed dial, a broken
// connection, an open breaker) are [*NodeError] values naming the node
// (never a password) and the operation. Each node has a circuit breaker
// that counts only connection-class failures; an open breaker fails fast
// with [ErrCircuitOpen]. The rules are one pure function of what happened
// (outcome.go in the source), table-tested.
//
// # Read your writes
//
// A [Session] in a statement's context ([WithSession]) gives
// read-your-writes: a write made with it raises its floor (a WAL position
// at or after the commit), and a ReadOnly statement made with it runs only
// on a replica that has replayed the floor, else on the primary,
// read-only. [Session.Token] and [ParseSession] carry it across requests
// and processes; [SessionHandler] does that for HTTP. [WithMaxLag] bounds
// one statement's replica lag.
//
// # Health and observability
//
// [Connector.Health] and [Connector.Stats] report every node's role, state
// (up, down, lagging, fenced), lag in bytes and time, RTT, timeline, breaker
// state and last error; [HealthHandler] serves them as JSON for load
// balancers and Kubernetes probes, and as an HTML status page to a
// browser (Accept: text/html; the examples module's statuspage test loads
// it in headless Chromium). Fencing: when two nodes claim to be primary,
// the one on the higher timeline wins, on the same timeline the incumbent
// keeps the role, and the other gets no writes until it reports being a
// replica.
//
// # Testing code that uses unified
//
// Package unifiedtest builds a unified *sql.DB over go-sqlmock nodes with
// fixed roles ([WithStaticPrimary], [WithNodeConnector]), so a test can
// assert that a read went to a replica and a write to the primary.
//
// # Concurrency
//
// [Connector], [Config] (once passed to NewConnector), the package functions
// and *sql.DB are safe for concurrent use. A [Conn] is used by one goroutine
// at a time, as database/sql guarantees.
package unified
