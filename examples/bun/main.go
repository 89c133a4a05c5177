// Command bun uses github.com/uptrace/bun with its PostgreSQL dialect
// (pgdialect) through unified, across a failover.
//
//	go -C examples run ./bun
//
// bun sits on any *sql.DB: open unified and wrap it.
//
//	sqldb, err := sql.Open("unified", dsn)
//	db := bun.NewDB(sqldb, pgdialect.New())
//
// (bun's own pgdriver is a driver of its own, not pgx: use database/sql's
// with unified instead.) Queries take the context they run with, so
// unified.WithMode(ctx, unified.ReadOnly) sends a read to a replica, and a
// ReadOnly transaction (db.RunInTx with that context) runs on one replica
// from BEGIN to COMMIT.
//
// It starts a local primary with two synchronous streaming replicas
// ([github.com/unifiedsql/unified/pgtest]), creates a table from a model,
// bulk-inserts, selects, updates in a transaction and reads on a replica;
// then SIGKILLs the primary while inserts run, promotes the most advanced
// replica, and runs the same calls again on the same *bun.DB. It needs the
// PostgreSQL server binaries (Debian: apt-get install postgresql).
package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"testing"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/examples/internal/demo"
	"github.com/unifiedsql/unified/examples/internal/scenario"
	"github.com/unifiedsql/unified/pgtest"
)

func main() { demo.Main("bun", run) }

// Item is a row of items.
type Item struct {
	bun.BaseModel `bun:"table:items"`

	ID   int64  `bun:",pk,autoincrement"`
	Name string `bun:",notnull"`
	Qty  int    `bun:",notnull"`
}

// result is what run saw, for the test.
type result struct {
	Before, After steps
	Failover      scenario.Result
}

// steps is what one pass of the bun calls returned.
type steps struct {
	Inserted   []Item // bulk insert, ids filled in by RETURNING
	Plenty     []Item // select with a condition
	Qty        int    // after the transaction
	ReadPort   int    // the node that served the ReadOnly transaction
	ReadItems  int    // items it saw
	ReadOnRepl bool
}

func run(tb testing.TB, out io.Writer) (*result, error) {
	ctx := tb.Context()
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	say("starting a local primary + 2 synchronous streaming replicas ...")
	cl := pgtest.Start(tb, pgtest.Synchronous())

	sqldb, err := sql.Open("unified", cl.DSN()+"&unified_health_interval=100ms")
	if err != nil {
		return nil, err
	}
	db := bun.NewDB(sqldb, pgdialect.New())
	defer db.Close()
	if _, err := db.NewCreateTable().Model((*Item)(nil)).Exec(ctx); err != nil {
		return nil, fmt.Errorf("create table: %w", err)
	}
	if err := scenario.AwaitReplayed(ctx, cl); err != nil { // before a ReadOnly read meets a replica without the table
		return nil, err
	}

	res := &result{}
	say("\nbefore the failover:")
	if res.Before, err = pass(ctx, db, cl, "bolt", say); err != nil {
		return nil, err
	}

	say("\nthe failover, while inserts run:")
	res.Failover = scenario.FailOverUnderLoad(tb, cl, out, func(ctx context.Context, i int) error {
		_, err := db.NewInsert().Model(&Item{Name: fmt.Sprintf("load-%d", i), Qty: 1}).Exec(ctx)
		return err
	})
	scenario.AwaitReplica(ctx, sqldb, out)

	say("\nafter the failover, the same *bun.DB:")
	if res.After, err = pass(ctx, db, cl, "nut", say); err != nil {
		return nil, err
	}
	return res, nil
}

// pass runs each bun call once; name prefixes the items it adds.
func pass(ctx context.Context, db *bun.DB, cl *pgtest.Cluster, name string, say func(string, ...any)) (steps, error) {
	var s steps
	s.Inserted = []Item{{Name: name + "-s", Qty: 1}, {Name: name + "-m", Qty: 5}, {Name: name + "-l", Qty: 20}}
	if _, err := db.NewInsert().Model(&s.Inserted).Exec(ctx); err != nil {
		return s, fmt.Errorf("bulk insert: %w", err)
	}
	say("  bulk insert         ids %d, %d, %d", s.Inserted[0].ID, s.Inserted[1].ID, s.Inserted[2].ID)
	if err := db.NewSelect().Model(&s.Plenty).Where("name LIKE ?", name+"-%").Where("qty >= ?", 5).Order("id").Scan(ctx); err != nil {
		return s, fmt.Errorf("select: %w", err)
	}
	say("  select              %d items with qty >= 5", len(s.Plenty))

	// A transaction on the primary: read, then update, atomically.
	err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var it Item
		if err := tx.NewSelect().Model(&it).Where("id = ?", s.Inserted[0].ID).For("UPDATE").Scan(ctx); err != nil {
			return err
		}
		_, err := tx.NewUpdate().Model(&it).Set("qty = ?", it.Qty+41).WherePK().Exec(ctx)
		return err
	})
	if err != nil {
		return s, fmt.Errorf("RunInTx: %w", err)
	}
	if err := db.NewSelect().Model((*Item)(nil)).Column("qty").Where("id = ?", s.Inserted[0].ID).Scan(ctx, &s.Qty); err != nil {
		return s, err
	}
	say("  RunInTx             %s-s now has qty %d", name, s.Qty)

	// A ReadOnly transaction: BEGIN on a replica, every read on it.
	ro := unified.WithMode(ctx, unified.ReadOnly)
	err = db.RunInTx(ro, &sql.TxOptions{ReadOnly: true}, func(ctx context.Context, tx bun.Tx) error {
		if err := tx.NewRaw("SELECT inet_server_port()").Scan(ctx, &s.ReadPort); err != nil {
			return err
		}
		n, err := tx.NewSelect().Model((*Item)(nil)).Count(ctx)
		s.ReadItems = int(n)
		return err
	})
	if err != nil {
		return s, fmt.Errorf("ReadOnly RunInTx: %w", err)
	}
	s.ReadOnRepl = scenario.IsReplica(cl, s.ReadPort)
	say("  ReadOnly RunInTx    served by %s: %d items (a replica may trail the primary)", scenario.Served(cl, s.ReadPort), s.ReadItems)
	return s, nil
}
