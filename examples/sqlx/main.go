// Command sqlx uses github.com/jmoiron/sqlx through unified, across a
// failover.
//
//	go -C examples run ./sqlx
//
// sqlx picks its placeholder style by driver name and does not know
// "unified", so the one line a sqlx program needs is
//
//	sqlx.BindDriver("unified", sqlx.DOLLAR)
//
// before sqlx.Open("unified", dsn) (or sqlx.NewDb(db, "unified") on a DB
// from unified.OpenDB). Without it sqlx.In and Rebind produce "?" and named
// queries fail with SQLSTATE 42601. Everything else is plain sqlx: the
// *sqlx.DB is an *sql.DB underneath, and a context made with
// unified.WithMode(ctx, unified.ReadOnly) sends a read to a replica.
//
// It starts a local primary with two synchronous streaming replicas
// ([github.com/unifiedsql/unified/pgtest]), runs Get, Select, NamedExec,
// sqlx.In with Rebind, a prepared named statement and ReadOnly reads, then
// SIGKILLs the primary while NamedExec INSERTs run and promotes the most
// advanced replica, and runs the same calls again on the same *sqlx.DB. It
// needs the PostgreSQL server binaries (Debian: apt-get install postgresql).
package main

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/examples/internal/demo"
	"github.com/unifiedsql/unified/examples/internal/scenario"
	"github.com/unifiedsql/unified/pgtest"
)

// sqlx does not know the "unified" driver: tell it unified takes $1, $2 ...
func init() { sqlx.BindDriver(unified.DriverName, sqlx.DOLLAR) }

func main() { demo.Main("sqlx", run) }

// Account is a row of accounts; sqlx maps columns by the db tags.
type Account struct {
	ID      int64  `db:"id"`
	Owner   string `db:"owner"`
	Balance int64  `db:"balance"`
}

// result is what run saw, for the test.
type result struct {
	Before, After steps // the calls before and after the failover
	Failover      scenario.Result
}

// steps is what one pass of the sqlx calls returned.
type steps struct {
	Got       Account   // Get
	All       []Account // Select
	Some      []Account // sqlx.In + Rebind
	Rich      []Account // the prepared named statement
	ReadPort  int       // the node that served the ReadOnly read
	ReadCount int       // accounts it saw
	OnReplica bool
	InQuery   string // the rebound query of sqlx.In
}

func run(tb testing.TB, out io.Writer) (*result, error) {
	ctx := tb.Context()
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	say("starting a local primary + 2 synchronous streaming replicas ...")
	cl := pgtest.Start(tb, pgtest.Synchronous())

	db, err := sqlx.Open("unified", cl.DSN()+"&unified_health_interval=100ms")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL)`); err != nil {
		return nil, err
	}
	if err := scenario.AwaitReplayed(ctx, cl); err != nil { // before a ReadOnly read meets a replica without the table
		return nil, err
	}
	// A named statement prepared once and used on both sides of the
	// failover: database/sql prepares it again on each connection.
	rich, err := db.PrepareNamedContext(ctx, `SELECT id, owner, balance FROM accounts WHERE balance >= :min ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rich.Close()

	res := &result{}
	say("\nbefore the failover:")
	if res.Before, err = pass(ctx, db, rich, cl, "ada", say); err != nil {
		return nil, err
	}

	say("\nthe failover, while NamedExec INSERTs run:")
	res.Failover = scenario.FailOverUnderLoad(tb, cl, out, func(ctx context.Context, i int) error {
		_, err := db.NamedExecContext(ctx, `INSERT INTO accounts (owner, balance) VALUES (:owner, :balance)`,
			Account{Owner: fmt.Sprintf("load-%d", i), Balance: 1})
		return err
	})
	scenario.AwaitReplica(ctx, db.DB, out)

	say("\nafter the failover, the same *sqlx.DB:")
	if res.After, err = pass(ctx, db, rich, cl, "grace", say); err != nil {
		return nil, err
	}
	return res, nil
}

// pass runs each sqlx call once; owner names the rows it adds.
func pass(ctx context.Context, db *sqlx.DB, rich *sqlx.NamedStmt, cl *pgtest.Cluster, owner string, say func(string, ...any)) (steps, error) {
	var s steps
	// NamedExec with a slice: one multi-row INSERT from struct fields.
	if _, err := db.NamedExecContext(ctx, `INSERT INTO accounts (owner, balance) VALUES (:owner, :balance)`, []Account{
		{Owner: owner, Balance: 100}, {Owner: owner + "-2", Balance: 250},
	}); err != nil {
		return s, fmt.Errorf("NamedExec: %w", err)
	}
	if err := db.GetContext(ctx, &s.Got, `SELECT id, owner, balance FROM accounts WHERE owner = $1`, owner); err != nil {
		return s, fmt.Errorf("Get: %w", err)
	}
	say("  Get                 %+v", s.Got)
	if err := db.SelectContext(ctx, &s.All, `SELECT id, owner, balance FROM accounts WHERE owner NOT LIKE 'load-%' ORDER BY id`); err != nil {
		return s, fmt.Errorf("Select: %w", err)
	}
	say("  Select              %d accounts", len(s.All))

	// sqlx.In expands the slice into (?, ?); Rebind turns ? into $n for
	// the driver bound above.
	q, args, err := sqlx.In(`SELECT id, owner, balance FROM accounts WHERE owner IN (?) ORDER BY id`, []string{owner, owner + "-2"})
	if err != nil {
		return s, err
	}
	s.InQuery = db.Rebind(q)
	if err := db.SelectContext(ctx, &s.Some, s.InQuery, args...); err != nil {
		return s, fmt.Errorf("In: %w", err)
	}
	say("  In + Rebind         %d accounts: %s", len(s.Some), s.InQuery)

	if err := rich.SelectContext(ctx, &s.Rich, map[string]any{"min": 200}); err != nil {
		return s, fmt.Errorf("prepared named statement: %w", err)
	}
	say("  PrepareNamed        %d accounts with balance >= 200", len(s.Rich))

	// A read a replica may serve: the mode rides in the context.
	ro := unified.WithMode(ctx, unified.ReadOnly)
	var rd struct {
		Port int `db:"port"`
		N    int `db:"n"`
	}
	if err := db.GetContext(ro, &rd, `SELECT inet_server_port() AS port, count(*) AS n FROM accounts`); err != nil {
		return s, fmt.Errorf("ReadOnly Get: %w", err)
	}
	s.ReadPort, s.ReadCount, s.OnReplica = rd.Port, rd.N, scenario.IsReplica(cl, rd.Port)
	say("  ReadOnly Get        served by %s: %d accounts (a replica may trail the primary)", scenario.Served(cl, rd.Port), rd.N)
	return s, nil
}
