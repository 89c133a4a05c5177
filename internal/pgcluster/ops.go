package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/unifiedsql/unified/internal/childproc"
)

const (
	// defaultWait bounds waits whose context has no deadline.
	defaultWait = 2 * time.Minute
	// connectTimeout bounds each connection attempt (a hung node accepts
	// TCP connections and never answers).
	connectTimeout = 5 * time.Second
	pollEvery      = 10 * time.Millisecond
)

// WithDefault returns ctx with a cancel function, bounded by 2 minutes
// when ctx has no deadline of its own: the bound of the waits of this
// package and of internal/patroni.
func WithDefault(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultWait)
}

// connConfig is the pgx configuration for user on node n: nothing from the
// environment ($PGOPTIONS, $PGTARGETSESSIONATTRS, ...) can add options,
// fallbacks, TLS or session checks.
func connConfig(n *Node, user string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(n.DSN())
	if err != nil {
		return nil, err
	}
	cfg.User = user
	cfg.Password = ""
	cfg.TLSConfig = nil
	cfg.Fallbacks = nil
	cfg.ValidateConnect = nil
	cfg.ConnectTimeout = connectTimeout
	cfg.RuntimeParams = map[string]string{"application_name": "pgcluster"} // no $PGOPTIONS
	cfg.Tracer = nil
	// Single-use connections: no prepared statements to cache.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeDescribeExec
	return cfg, nil
}

// Connect opens a new connection to node i as user postgres; the caller
// closes it.
func (c *Cluster) Connect(ctx context.Context, i int) (*pgx.Conn, error) {
	n, err := c.node(i)
	if err != nil {
		return nil, err
	}
	cfg, err := connConfig(n, "postgres")
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: connect to %s: %w", n.Name, err)
	}
	return conn, nil
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// Exec runs sql (with args, if any) on node i over a new connection, which
// it closes. Several statements separated by semicolons are allowed when
// there are no args.
func (c *Cluster) Exec(ctx context.Context, i int, sql string, args ...any) error {
	conn, err := c.Connect(ctx, i)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("pgcluster: %s: %s: %w", c.nodes[i].Name, sql, err)
	}
	return nil
}

// QueryRow runs a single-row query on node i over a new connection. The
// connection is closed by Scan, so call Scan exactly once; an error to
// connect is returned by Scan. pgx.ErrNoRows is returned unwrapped.
func (c *Cluster) QueryRow(ctx context.Context, i int, sql string, args ...any) pgx.Row {
	conn, err := c.Connect(ctx, i)
	if err != nil {
		return errRow{err}
	}
	return &connRow{conn: conn, row: conn.QueryRow(ctx, sql, args...)}
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type connRow struct {
	once sync.Once
	conn *pgx.Conn
	row  pgx.Row
	err  error
}

func (r *connRow) Scan(dest ...any) error {
	r.once.Do(func() {
		r.err = r.row.Scan(dest...)
		closeConn(r.conn)
	})
	return r.err
}

// InRecovery reports pg_is_in_recovery() of node i: true for a standby.
func (c *Cluster) InRecovery(ctx context.Context, i int) (bool, error) {
	var rec bool
	if err := c.QueryRow(ctx, i, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return false, err
	}
	return rec, nil
}

// Primary returns the index of the single running node that is not in
// recovery. Nodes that are stopped or hung are skipped, each other node is
// asked with a timeout of a few seconds; it is an error when no node or
// more than one node is a primary.
func (c *Cluster) Primary(ctx context.Context) (int, error) {
	prim, errs := OutOfRecovery(len(c.nodes),
		func(i int) (string, bool, bool) { return c.nodes[i].Name, c.Running(i), c.Hung(i) },
		func(i int) (bool, error) {
			ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			return c.InRecovery(ctx, i)
		})
	switch len(prim) {
	case 1:
		return prim[0], nil
	case 0:
		return -1, fmt.Errorf("pgcluster: no primary: %w", errors.Join(errs...))
	default:
		return -1, fmt.Errorf("pgcluster: several primaries: nodes %v", prim)
	}
}

// OutOfRecovery asks the n nodes of a cluster at once whether they are in
// recovery and returns, in index order, those that answered no (the
// primaries), and for each other node why it does not count. state(i)
// gives node i's name and whether it runs and is hung: a node that does
// not run, or is hung, is not asked. inRecovery(i) asks node i. Primary
// and patroni's Leader start from it.
func OutOfRecovery(n int, state func(i int) (name string, running, hung bool), inRecovery func(i int) (bool, error)) (prim []int, errs []error) {
	rec := make([]bool, n)
	errs = make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		switch name, running, hung := state(i); {
		case !running:
			errs[i] = fmt.Errorf("%s is not running", name)
		case hung:
			errs[i] = fmt.Errorf("%s is hung", name)
		default:
			wg.Go(func() { rec[i], errs[i] = inRecovery(i) })
		}
	}
	wg.Wait()
	for i := range n {
		if errs[i] == nil && !rec[i] {
			prim = append(prim, i)
		}
	}
	return prim, errs
}

// waitReady waits until n accepts connections (an authentication failure
// counts: the server answered). It fails early, with the log tail, when
// the postmaster exits.
//
// If since >= 0, the node's log from that offset is also watched for
// messages saying the standby cannot follow its primary (see
// unfollowableLocal), which fail the wait at once.
func (c *Cluster) waitReady(ctx context.Context, n *Node, since int64) error {
	ctx, cancel := WithDefault(ctx)
	defer cancel()
	c.mu.Lock()
	p := n.proc
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("pgcluster: %s was never started", n.Name)
	}
	cfg, err := pgconn.ParseConfig(n.DSN())
	if err != nil {
		return err
	}
	cfg.Fallbacks, cfg.TLSConfig, cfg.ValidateConnect, cfg.Password = nil, nil, nil, ""
	cfg.RuntimeParams = map[string]string{"application_name": "pgcluster"}
	cfg.ConnectTimeout = 2 * time.Second
	var last error
	for {
		if p.Exited() {
			return fmt.Errorf("pgcluster: %s exited during startup (%v); log:\n%s", n.Name, p.Err(), n.logTail(20))
		}
		if err := n.cannotFollow(since); err != nil {
			return err
		}
		conn, err := pgconn.ConnectConfig(ctx, cfg)
		if err == nil {
			closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(closeCtx)
			cancel()
			return nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "28000" || pgErr.Code == "28P01") {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: %s does not accept connections: %w (last: %v); log:\n%s", n.Name, ctx.Err(), last, n.logTail(20))
		case <-time.After(pollEvery):
		}
	}
}

// poll runs check on node i every interval, on one connection that is
// reopened after errors, until check reports done, the node stops, the
// check fails with an SQL error that waiting will not fix, or ctx ends.
func (c *Cluster) poll(ctx context.Context, i int, every time.Duration, what string, check func(ctx context.Context, conn *pgx.Conn) (bool, error)) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	ctx, cancel := WithDefault(ctx)
	defer cancel()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeConn(conn)
		}
	}()
	var last error
	for {
		if !c.Running(i) {
			return fmt.Errorf("pgcluster: %s: %s: the node is not running; log:\n%s", n.Name, what, n.logTail(15))
		}
		if conn == nil {
			conn, err = c.Connect(ctx, i)
			if err != nil {
				conn, last = nil, err
			}
		}
		if conn != nil {
			done, err := check(ctx, conn)
			if err == nil && done {
				return nil
			}
			if err != nil {
				last = err
				var pgErr *pgconn.PgError
				var cfErr *cannotFollowError
				if errors.As(err, &pgErr) && !retryableCode(pgErr.Code) || errors.As(err, &cfErr) {
					return fmt.Errorf("pgcluster: %s: %s: %w", n.Name, what, err)
				}
				closeConn(conn)
				conn = nil
			}
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = errors.New("condition not met")
			}
			return fmt.Errorf("pgcluster: %s: %s: %w (last: %v)", n.Name, what, ctx.Err(), last)
		case <-time.After(every):
		}
	}
}

// retryableCode: connection exceptions, operator intervention (shutdown,
// starting up), insufficient resources.
func retryableCode(code string) bool {
	return strings.HasPrefix(code, "08") || strings.HasPrefix(code, "57") || strings.HasPrefix(code, "53")
}

// Server log messages of a standby that cannot stream from its primary
// until it is rewound or rebuilt: the primary lacks the WAL it needs, or
// the standby has replayed past the primary's fork point. The remote ones
// count only when reported by this node's WAL receiver (the same text
// also appears when this node's walsender refuses a cascading standby).
var (
	unfollowableLocal = []string{
		"forked off current database system timeline",
		"is not a child of this server's history",
		"is behind recovery timeline",
	}
	unfollowableRemote = []string{
		"has already been removed",
		"is not in this server's history",
		"is ahead of the WAL flush position",
	}
	receiverPrefixes = []string{
		"could not receive data from WAL stream",
		"could not start WAL streaming",
	}
)

// cannotFollowError is the error of cannotFollow; poll stops at it.
type cannotFollowError struct{ node, line string }

func (e *cannotFollowError) Error() string {
	return "pgcluster: " + e.node + " cannot follow its primary: " + e.line
}

// cannotFollow returns an error if n's log since offset since (none if
// since < 0) says the standby cannot follow its primary.
func (n *Node) cannotFollow(since int64) error {
	if since < 0 {
		return nil
	}
	for _, line := range strings.Split(n.logSince(since), "\n") {
		if containsAny(line, unfollowableLocal) || containsAny(line, receiverPrefixes) && containsAny(line, unfollowableRemote) {
			return &cannotFollowError{node: n.Name, line: strings.TrimSpace(line)}
		}
	}
	return nil
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// streamingFrom reports whether node i's WAL receiver streams from node p.
func streamingFrom(ctx context.Context, conn *pgx.Conn, p *Node) (bool, error) {
	var status *string
	var port *int32
	err := conn.QueryRow(ctx, "SELECT status, sender_port FROM pg_stat_wal_receiver").Scan(&status, &port)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return status != nil && *status == "streaming" && port != nil && int(*port) == p.Port, nil
}

// Streaming reports whether node i is a standby whose WAL receiver is
// currently streaming from node primary.
func (c *Cluster) Streaming(ctx context.Context, i, primary int) (bool, error) {
	p, err := c.node(primary)
	if err != nil {
		return false, err
	}
	conn, err := c.Connect(ctx, i)
	if err != nil {
		return false, err
	}
	defer closeConn(conn)
	return streamingFrom(ctx, conn, p)
}

// walMark returns a WAL position of node i that a standby streaming from
// it must reach: on a primary it first commits a tiny logical message
// (synchronous_commit=local, so it never waits for a standby) and returns
// the position after it; on a standby its replay position.
func (c *Cluster) walMark(ctx context.Context, i int) (string, error) {
	conn, err := c.Connect(ctx, i)
	if err != nil {
		return "", err
	}
	defer closeConn(conn)
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return "", fmt.Errorf("pgcluster: node%d: %w", i, err)
	}
	q := "SELECT pg_last_wal_replay_lsn()::text"
	if !rec {
		if _, err := conn.Exec(ctx, "SET synchronous_commit = local"); err != nil {
			return "", fmt.Errorf("pgcluster: node%d: %w", i, err)
		}
		if _, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(true, 'pgcluster', 'mark')"); err != nil {
			return "", fmt.Errorf("pgcluster: node%d: %w", i, err)
		}
		q = "SELECT pg_current_wal_lsn()::text"
	}
	var lsn string
	if err := conn.QueryRow(ctx, q).Scan(&lsn); err != nil {
		return "", fmt.Errorf("pgcluster: node%d: %w", i, err)
	}
	return lsn, nil
}

// waitStreaming waits until standby i streams from primary and has
// received new WAL written on primary after the wait began (see walMark).
// Both matter: a standby that cannot follow primary's timeline (it
// replayed past the fork point) shows "streaming" for a moment on every
// retry, and a restarted WAL receiver does not advance its received
// position over WAL the standby already had.
//
// since is as for waitReady.
func (c *Cluster) waitStreaming(ctx context.Context, i, primary int, since int64) error {
	p, err := c.node(primary)
	if err != nil {
		return err
	}
	n, err := c.node(i)
	if err != nil {
		return err
	}
	target, err := c.walMark(ctx, primary)
	if err != nil {
		return err
	}
	return c.poll(ctx, i, pollEvery, "waiting to stream from "+p.Name+" up to "+target, func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		if err := n.cannotFollow(since); err != nil {
			return false, err
		}
		ok, err := streamingFrom(ctx, conn, p)
		if !ok || err != nil {
			return false, err
		}
		err = conn.QueryRow(ctx, "SELECT coalesce(pg_last_wal_receive_lsn() >= $1::text::pg_lsn, false)", target).Scan(&ok)
		return ok, err
	})
}

// Kill crashes node i: SIGKILL to the postmaster only, as a real crash
// would, and waits for it to exit. Its backends notice the dead postmaster
// on their own a little later (they may still answer meanwhile); a later
// Start, Rejoin or Close waits for them to go and kills them after a short
// grace. A hung node is resumed so its backends can exit.
func (c *Cluster) Kill(i int) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	c.mu.Lock()
	wasHung := n.hung
	var kids []int
	if n.proc != nil {
		// Listed before the kill: once the postmaster is gone its
		// children are re-parented and can no longer be found by parent
		// (and not by process group: backends call setsid).
		kids = childproc.ChildrenOf(n.proc.PID)
	}
	c.mu.Unlock()
	p, err := c.signalNode(n, syscall.SIGKILL, false)
	if err != nil {
		return err
	}
	if !p.Wait(context.Background(), 10*time.Second) {
		return fmt.Errorf("pgcluster: %s (pid %d) does not exit after SIGKILL", n.Name, p.PID)
	}
	if wasHung {
		resumeTree(p.PID, kids)
	}
	// The backends go on for a moment (they notice the dead postmaster
	// when they next wait): that is the crash the tests want. Kill
	// returns once they are gone, so that a Start that follows finds the
	// shared memory free.
	waitGone(kids, time.Second)
	c.mu.Lock()
	n.hung = false
	c.mu.Unlock()
	c.logf("pgcluster: %s killed", n.Name)
	return nil
}

// Hang stops node i with SIGSTOP, the postmaster and every child process
// (backends call setsid, so this is not one process group): TCP connections
// are still accepted by the kernel, nothing answers. Continue undoes it.
func (c *Cluster) Hang(i int) error { return c.signalTree(i, syscall.SIGSTOP) }

// Continue resumes node i after Hang (SIGCONT to the postmaster and every
// child process).
func (c *Cluster) Continue(i int) error { return c.signalTree(i, syscall.SIGCONT) }

// signalTree sends sig to node i's postmaster and every child process.
func (c *Cluster) signalTree(i int, sig syscall.Signal) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	_, err = c.signalNode(n, sig, true)
	return err
}

// Stop shuts node i down: mode "smart" (SIGTERM, waits for clients to
// disconnect), "fast" (SIGINT) or "immediate" (SIGQUIT, crash-like), and
// waits up to a minute for it to exit. A hung node is resumed first.
// Stopping a node that is not running is not an error.
func (c *Cluster) Stop(i int, mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return c.StopContext(ctx, i, mode)
}

// StopContext is Stop waiting until ctx ends instead of a minute. When ctx
// ends first the node is left running (shutting down) and an error returned.
func (c *Cluster) StopContext(ctx context.Context, i int, mode string) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	var sig syscall.Signal
	switch mode {
	case "smart":
		sig = syscall.SIGTERM
	case "fast":
		sig = syscall.SIGINT
	case "immediate":
		sig = syscall.SIGQUIT
	default:
		return fmt.Errorf("pgcluster: unknown stop mode %q (want smart, fast or immediate)", mode)
	}
	c.mu.Lock()
	p := n.proc
	if p == nil || p.Exited() {
		c.mu.Unlock()
		return nil
	}
	if n.hung {
		resumeTree(p.PID, childproc.ChildrenOf(p.PID))
		n.hung = false
	}
	err = syscall.Kill(p.PID, sig)
	c.mu.Unlock()
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgcluster: stop %s: %w", n.Name, err)
	}
	select {
	case <-p.Done():
	case <-ctx.Done():
		return fmt.Errorf("pgcluster: %s did not stop (%s): %w", n.Name, mode, ctx.Err())
	}
	c.logf("pgcluster: %s stopped (%s)", n.Name, mode)
	return c.reapNode(ctx, n)
}

// Start starts node i again on its data directory and port, as whatever the
// data directory says (primary, or standby if it has standby.signal), and
// waits until it accepts connections. It does nothing if the node runs.
// Leftover backends of a killed postmaster are reaped first.
func (c *Cluster) Start(ctx context.Context, i int) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	if c.Running(i) {
		return nil
	}
	if err := c.startProcess(ctx, n); err != nil {
		return err
	}
	return c.waitReady(ctx, n, -1)
}

// SetStandbySignal writes (on) or removes (off) standby.signal in stopped
// node i's data directory: a node started without it comes up as a
// primary, on the timeline it was on (crash recovery, no timeline switch),
// which is how a second primary on the same timeline happens.
func (c *Cluster) SetStandbySignal(i int, on bool) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	if c.Running(i) {
		return fmt.Errorf("pgcluster: SetStandbySignal %s: the node runs; stop it first", n.Name)
	}
	path := filepath.Join(n.DataDir, "standby.signal")
	if on {
		return c.writeFile(path, "")
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pgcluster: SetStandbySignal %s: %w", n.Name, err)
	}
	return nil
}

// Promote promotes standby i: SELECT pg_promote(wait => false), then polls
// pg_is_in_recovery() on the same connection every 2 ms and returns the
// moment it first answered false, that is when the node accepts writes
// (pg_ctl promote -w would report it up to ~140 ms late).
func (c *Cluster) Promote(ctx context.Context, i int) (time.Time, error) {
	n, err := c.node(i)
	if err != nil {
		return time.Time{}, err
	}
	ctx, cancel := WithDefault(ctx)
	defer cancel()
	conn, err := c.Connect(ctx, i)
	if err != nil {
		return time.Time{}, err
	}
	defer closeConn(conn)
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(wait => false)").Scan(&ok); err != nil {
		return time.Time{}, fmt.Errorf("pgcluster: promote %s: %w", n.Name, err)
	}
	if !ok {
		return time.Time{}, fmt.Errorf("pgcluster: promote %s: pg_promote returned false", n.Name)
	}
	for {
		var rec bool
		if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
			return time.Time{}, fmt.Errorf("pgcluster: promote %s: %w", n.Name, err)
		}
		if !rec {
			at := time.Now()
			c.logf("pgcluster: %s promoted", n.Name)
			return at, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("pgcluster: promote %s: %w", n.Name, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Repoint makes running standby i stream from node primary: ALTER SYSTEM
// SET primary_conninfo and pg_reload_conf() (PostgreSQL 13+ restarts the
// WAL receiver without a server restart), then waits until
// pg_stat_wal_receiver shows it streaming from primary. A standby that
// has replayed past the new primary's fork point never streams: use Rejoin.
func (c *Cluster) Repoint(ctx context.Context, i, primary int) error {
	n, p, err := c.standbyAndPrimary("repoint", i, primary)
	if err != nil {
		return err
	}
	conn, err := c.Connect(ctx, i)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return fmt.Errorf("pgcluster: repoint %s: %w", n.Name, err)
	}
	if !rec {
		return fmt.Errorf("pgcluster: repoint %s: it is not a standby (use Rejoin)", n.Name)
	}
	since := n.logSize()
	if _, err := conn.Exec(ctx, "ALTER SYSTEM SET primary_conninfo = "+quoteLiteral(conninfo(n, p))); err != nil {
		return fmt.Errorf("pgcluster: repoint %s: %w", n.Name, err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("pgcluster: repoint %s: %w", n.Name, err)
	}
	if err := c.waitStreaming(ctx, i, primary, since); err != nil {
		return err
	}
	c.logf("pgcluster: %s streams from %s", n.Name, p.Name)
	return nil
}

// standbyAndPrimary returns nodes i and primary for op (Repoint,
// Rejoin), which makes i a standby of primary: an error when either does
// not exist or both are the same node.
func (c *Cluster) standbyAndPrimary(op string, i, primary int) (n, p *Node, err error) {
	if n, err = c.node(i); err != nil {
		return nil, nil, err
	}
	if p, err = c.node(primary); err != nil {
		return nil, nil, err
	}
	if i == primary {
		return nil, nil, fmt.Errorf("pgcluster: cannot %s %s to itself", op, n.Name)
	}
	return n, p, nil
}

// Rejoin turns node i (an old primary, or any node, running or not) into
// a standby of node primary: it stops the node (fast), runs pg_rewind
// against primary (after a CHECKPOINT there, so a fresh promotion is
// visible in its control file), writes standby.signal and
// primary_conninfo, starts it and waits until it streams. If pg_rewind
// fails or the rewound node does not stream within 10 s, the node is
// rebuilt with pg_basebackup instead. Rejoin drops the node's
// synchronous_standby_names and primary_slot_name ALTER SYSTEM settings.
func (c *Cluster) Rejoin(ctx context.Context, i, primary int) error {
	n, p, err := c.standbyAndPrimary("rejoin", i, primary)
	if err != nil {
		return err
	}
	ctx, cancel := WithDefault(ctx)
	defer cancel()
	if err := c.Exec(ctx, primary, "CHECKPOINT"); err != nil {
		return fmt.Errorf("pgcluster: rejoin %s: source: %w", n.Name, err)
	}
	if err := c.stopForRebuild(ctx, i); err != nil {
		return err
	}
	if err := c.rewind(ctx, n, p); err != nil {
		c.logf("pgcluster: rejoin %s: %v; rebuilding it with pg_basebackup", n.Name, err)
		if err := c.stopForRebuild(ctx, i); err != nil {
			return err
		}
		if err := c.cloneStandby(ctx, i, primary); err != nil {
			return fmt.Errorf("pgcluster: rejoin %s: %w", n.Name, err)
		}
	}
	c.logf("pgcluster: %s rejoined as standby of %s", n.Name, p.Name)
	return nil
}

// stopForRebuild stops node i fast, or immediately if that takes more than
// 10 s, and reaps its processes.
func (c *Cluster) stopForRebuild(ctx context.Context, i int) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := c.StopContext(sctx, i, "fast")
	cancel()
	if err != nil && ctx.Err() == nil {
		c.logf("pgcluster: %v; stopping immediately", err)
		if err := c.StopContext(ctx, i, "immediate"); err != nil {
			return err
		}
	}
	return c.reapNode(ctx, c.nodes[i])
}

// rewind runs pg_rewind on stopped node n from p, configures it as p's
// standby, starts it and waits until it streams.
func (c *Cluster) rewind(ctx context.Context, n, p *Node) error {
	if _, err := os.Stat(filepath.Join(c.bin, "pg_rewind")); err != nil {
		return errors.New("no pg_rewind")
	}
	// pg_rewind recovers a crashed target in single-user mode first, which
	// refuses to run with standby.signal present.
	for _, f := range []string{"standby.signal", "recovery.signal"} {
		if err := os.Remove(filepath.Join(n.DataDir, f)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	out, err := c.runTool(ctx, "pg_rewind", "-D", n.DataDir, "--no-sync",
		fmt.Sprintf("--source-server=host=%s port=%d user=postgres dbname=postgres", p.Host, p.Port))
	if err != nil {
		return err
	}
	c.logf("pgcluster: pg_rewind %s: %s", n.Name, childproc.Tail(string(out), 3))
	if err := c.configureStandby(n, p); err != nil {
		return err
	}
	since := n.logSize()
	if err := c.startProcess(ctx, n); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.waitReady(sctx, n, since); err != nil {
		return err
	}
	return c.waitStreaming(sctx, n.Index, p.Index, since)
}

// PauseReplay pauses WAL replay on standby i (pg_wal_replay_pause()) and
// waits until pg_get_wal_replay_pause_state() says 'paused'. WAL is still
// received, so the node's lag grows while the primary writes.
func (c *Cluster) PauseReplay(ctx context.Context, i int) error {
	if err := c.Exec(ctx, i, "SELECT pg_wal_replay_pause()"); err != nil {
		return err
	}
	return c.poll(ctx, i, 2*time.Millisecond, "waiting for replay to pause", func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		var state string
		err := conn.QueryRow(ctx, "SELECT pg_get_wal_replay_pause_state()").Scan(&state)
		return state == "paused", err
	})
}

// ResumeReplay resumes WAL replay on standby i (pg_wal_replay_resume()).
func (c *Cluster) ResumeReplay(ctx context.Context, i int) error {
	return c.Exec(ctx, i, "SELECT pg_wal_replay_resume()")
}

// SyncStandbyNames is the synchronous_standby_names SetSynchronous sets:
// a commit waits for any one standby.
const SyncStandbyNames = "ANY 1 (*)"

// SetSynchronous switches synchronous replication on node primary on
// (synchronous_standby_names = 'ANY 1 (*)') or off (”), with ALTER SYSTEM
// and a reload, and waits until pg_stat_replication shows a standby with
// sync_state sync or quorum (on) or none (off).
func (c *Cluster) SetSynchronous(ctx context.Context, primary int, on bool) error {
	val := ""
	if on {
		val = SyncStandbyNames
	}
	if err := c.Exec(ctx, primary, "ALTER SYSTEM SET synchronous_standby_names = "+quoteLiteral(val)); err != nil {
		return err
	}
	if err := c.Exec(ctx, primary, "SELECT pg_reload_conf()"); err != nil {
		return err
	}
	return c.poll(ctx, primary, pollEvery, fmt.Sprintf("waiting for synchronous=%v", on), func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		var sync int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')").Scan(&sync)
		return err == nil && (sync > 0) == on, err
	})
}

// WaitCatchUp waits until node i has replayed everything node primary had
// written when WaitCatchUp was called (replay LSN >= pg_current_wal_lsn()).
func (c *Cluster) WaitCatchUp(ctx context.Context, i, primary int) error {
	if _, err := c.node(i); err != nil {
		return err
	}
	var target string
	if err := c.QueryRow(ctx, primary, "SELECT pg_current_wal_lsn()::text").Scan(&target); err != nil {
		return fmt.Errorf("pgcluster: catch-up target on node%d: %w", primary, err)
	}
	if i == primary {
		return nil
	}
	return c.poll(ctx, i, 5*time.Millisecond, "waiting to replay "+target, func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		var ok bool
		err := conn.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)", target).Scan(&ok)
		return ok, err
	})
}

// WriteHBA replaces node i's pg_hba.conf with lines (DefaultHBA if lines
// is nil) and reloads it. When the node runs, it returns once the server
// has reloaded the file (seen through pg_conf_load_time() on a connection
// opened before the change); if the old file already locked user postgres
// out it sends SIGHUP and waits 100 ms instead. A file the server cannot
// parse is logged by the server and the old rules stay in force.
func (c *Cluster) WriteHBA(ctx context.Context, i int, lines []string) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	path := filepath.Join(n.DataDir, "pg_hba.conf")
	if !c.Running(i) {
		return c.writeFile(path, hbaContent(lines))
	}
	conn, cerr := c.Connect(ctx, i)
	if cerr != nil {
		if err := c.writeFile(path, hbaContent(lines)); err != nil {
			return err
		}
		if _, err := c.signalNode(n, syscall.SIGHUP, false); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
			return nil
		}
	}
	defer closeConn(conn)
	var before time.Time
	if err := conn.QueryRow(ctx, "SELECT pg_conf_load_time()").Scan(&before); err != nil {
		return fmt.Errorf("pgcluster: %s: %w", n.Name, err)
	}
	if err := c.writeFile(path, hbaContent(lines)); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("pgcluster: %s: %w", n.Name, err)
	}
	ctx, cancel := WithDefault(ctx)
	defer cancel()
	for {
		var t time.Time
		if err := conn.QueryRow(ctx, "SELECT pg_conf_load_time()").Scan(&t); err != nil {
			return fmt.Errorf("pgcluster: %s: waiting for reload: %w", n.Name, err)
		}
		if t.After(before) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: %s: waiting for reload: %w", n.Name, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// hbaIsDefault reports whether node i's pg_hba.conf is the default one.
func (c *Cluster) hbaIsDefault(i int) bool {
	b, err := os.ReadFile(filepath.Join(c.nodes[i].DataDir, "pg_hba.conf"))
	return err == nil && string(b) == hbaContent(nil)
}

// timeline returns the current timeline of primary i.
func (c *Cluster) timeline(ctx context.Context, i int) (uint64, error) {
	var s string
	if err := c.QueryRow(ctx, i, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").Scan(&s); err != nil {
		return 0, err
	}
	return strconv.ParseUint(s, 16, 32)
}
