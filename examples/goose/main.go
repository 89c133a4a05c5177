// Command goose runs github.com/pressly/goose/v3 migrations through unified,
// with goose's session locker (a PostgreSQL advisory lock), across a
// failover that interrupts a migration.
//
//	go -C examples run ./goose
//
// goose needs nothing special: give its Provider the *sql.DB from
// sql.Open("unified", dsn) and the postgres dialect. Without a mode every
// statement runs on the primary with pgx's semantics, so the session
// locker's pg_try_advisory_lock and the migrations run in one server
// session (goose holds a *sql.Conn for the whole run), exactly as over pgx:
//
//	locker, _ := lock.NewPostgresSessionLocker()
//	p, _ := goose.NewProvider(goose.DialectPostgres, db, migrations, goose.WithSessionLocker(locker))
//	results, err := p.Up(ctx)
//
// A failover ends that session. The run in progress fails, as it would
// over pgx, and nothing half-done remains: the migration's transaction
// never committed, and an advisory lock belongs to a session on one server,
// so the new primary holds none. Running Up again, on the same *sql.DB,
// takes the lock on the new primary and applies what is missing.
//
// It starts a local primary with two synchronous streaming replicas
// ([github.com/unifiedsql/unified/pgtest]), applies migrations 1 and 2 (SQL
// files embedded from migrations/), starts Up, and while migration 3 (a Go
// migration that waits on purpose) holds the lock, SIGKILLs the primary and
// promotes the most advanced replica; then runs Up again. It needs the
// PostgreSQL server binaries (Debian: apt-get install postgresql).
package main

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync/atomic"
	"testing"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	_ "github.com/unifiedsql/unified" // the "unified" driver
	"github.com/unifiedsql/unified/examples/internal/demo"
	"github.com/unifiedsql/unified/examples/internal/scenario"
	"github.com/unifiedsql/unified/pgtest"
)

//go:embed migrations/*.sql
var embedded embed.FS

func main() { demo.Main("goose", run) }

// result is what run saw, for the test.
type result struct {
	VersionBefore      int64 // after Up to 2
	Interrupted        error // the Up that the failover ended
	LocksDuringRun     int   // advisory locks held on the primary while migration 3 ran
	VersionAfterFail   int64 // on the new primary, before the second Up
	LocksAfterFailover int   // advisory locks on the new primary then
	Applied            []int64
	VersionAfter       int64
	Backfilled         int // users whose name migration 3 filled in
}

// backfill is migration 3, in Go: fill users.name from the e-mail address.
// The first time it runs it waits (inside its transaction, holding goose's
// lock) until its session ends, which in this demo is the failover; started
// reports when it began waiting.
func backfill(started chan<- struct{}) *goose.Migration {
	var waited atomic.Bool
	return goose.NewGoMigration(3, &goose.GoFunc{RunTx: func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE users SET name = split_part(email, '@', 1) WHERE name = ''`); err != nil {
			return err
		}
		if !waited.Swap(true) {
			close(started)
			_, err := tx.ExecContext(ctx, `SELECT pg_sleep(60)`) // the demo's stand-in for a long migration
			return err
		}
		return nil
	}}, nil)
}

// newProvider is goose over a unified DB: the postgres dialect, the
// embedded SQL files, migration 3, and the advisory-lock session locker.
func newProvider(db *sql.DB, started chan<- struct{}) (*goose.Provider, error) {
	migrations, err := fs.Sub(embedded, "migrations")
	if err != nil {
		return nil, err
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.DialectPostgres, db, migrations,
		goose.WithSessionLocker(locker),
		goose.WithGoMigrations(backfill(started)),
		goose.WithDisableGlobalRegistry(true),
	)
}

func run(tb testing.TB, out io.Writer) (*result, error) {
	ctx := tb.Context()
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	say("starting a local primary + 2 synchronous streaming replicas ...")
	cl := pgtest.Start(tb, pgtest.Synchronous())

	db, err := sql.Open("unified", cl.DSN()+"&unified_health_interval=100ms")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	started := make(chan struct{})
	p, err := newProvider(db, started)
	if err != nil {
		return nil, err
	}
	res := &result{}

	applied, err := p.UpTo(ctx, 2)
	if err != nil {
		return nil, fmt.Errorf("up to 2: %w", err)
	}
	printResults(say, applied)
	if res.VersionBefore, err = p.GetDBVersion(ctx); err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO users (email) VALUES ('ada@example.com'), ('grace@example.com')`); err != nil {
		return nil, err
	}
	say("version %d; 2 users added", res.VersionBefore)

	// Up, interrupted by the failover while migration 3 holds the lock.
	say("\nUp: migration 3 starts and waits, holding goose's advisory lock ...")
	done := make(chan error, 1)
	go func() {
		_, err := p.Up(ctx)
		done <- err
	}()
	select {
	case <-started:
	case err := <-done:
		return nil, fmt.Errorf("up ended before migration 3 waited: %v", err)
	}
	if res.LocksDuringRun, err = advisoryLocks(ctx, db); err != nil {
		return nil, err
	}
	say("  advisory locks held on the primary: %d (goose's)", res.LocksDuringRun)
	scenario.FailOver(tb, cl, out)
	res.Interrupted = <-done
	say("  Up failed, as over pgx: %v", res.Interrupted)
	if res.Interrupted == nil {
		return nil, errors.New("the interrupted Up succeeded")
	}

	// The same *sql.DB and Provider, on the new primary.
	say("\nafter the failover:")
	if res.VersionAfterFail, err = p.GetDBVersion(ctx); err != nil {
		return nil, err
	}
	if res.LocksAfterFailover, err = advisoryLocks(ctx, db); err != nil {
		return nil, err
	}
	say("  version %d on the new primary (migration 3 never committed), %d advisory locks", res.VersionAfterFail, res.LocksAfterFailover)
	applied, err = p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("up after the failover: %w", err)
	}
	printResults(say, applied)
	for _, r := range applied {
		res.Applied = append(res.Applied, r.Source.Version)
	}
	if res.VersionAfter, err = p.GetDBVersion(ctx); err != nil {
		return nil, err
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM users WHERE name <> ''`).Scan(&res.Backfilled); err != nil {
		return nil, err
	}
	say("  version %d; %d users backfilled by migration 3", res.VersionAfter, res.Backfilled)
	return res, nil
}

func printResults(say func(string, ...any), results []*goose.MigrationResult) {
	for _, r := range results {
		say("  applied %d (%s) in %v", r.Source.Version, r.Source.Type, r.Duration.Round(100_000))
	}
}

// advisoryLocks counts the advisory locks granted on the primary.
func advisoryLocks(ctx context.Context, db *sql.DB) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted`).Scan(&n)
	return n, err
}
