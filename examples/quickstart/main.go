// Command quickstart starts a local PostgreSQL primary with two streaming
// replicas, opens one *sql.DB with sql.Open("unified", dsn), shows on which
// node each statement runs, and stops the cluster.
//
//	go -C examples run ./quickstart
//
// The cluster comes from the public test kit
// [github.com/unifiedsql/unified/pgtest], run outside a test with
// [pgtest.Run]. It needs the PostgreSQL server binaries (Debian: apt-get
// install postgresql; or set UNIFIED_PG_BIN to their directory).
package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/examples/internal/demo"
	"github.com/unifiedsql/unified/pgtest"
)

func main() {
	os.Exit(pgtest.Run("quickstart", func(tb testing.TB) {
		if err := run(tb); err != nil {
			tb.Fatal(err)
		}
	}))
}

func run(tb testing.TB) error {
	ctx := tb.Context()
	fmt.Println("starting a local primary + 2 streaming replicas ...")
	start := time.Now()
	cl := pgtest.Start(tb, pgtest.Replicas(2))
	fmt.Printf("cluster up in %v\n", time.Since(start).Round(time.Millisecond))
	demo.PrintNodes(os.Stdout, cl)

	dsn := cl.DSN() + "&unified_health_interval=200ms"
	fmt.Printf("\nsql.Open(\"unified\", %q)\n\n", dsn)
	db, err := sql.Open("unified", dsn)
	if err != nil {
		return err
	}
	defer db.Close()

	where := func(ctx context.Context, label string) error {
		var port int
		var inRecovery bool
		err := db.QueryRowContext(ctx, "SELECT inet_server_port(), pg_is_in_recovery()").Scan(&port, &inRecovery)
		if err != nil {
			return err
		}
		role := "primary"
		if inRecovery {
			role = "replica"
		}
		fmt.Printf("  %-36s -> 127.0.0.1:%d (%s)\n", label, port, role)
		return nil
	}

	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS greetings (id serial PRIMARY KEY, text text)"); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO greetings (text) VALUES ($1)", "hello"); err != nil {
		return err
	}
	fmt.Println("where statements run:")
	if err := where(ctx, "no mode (default: read-write)"); err != nil {
		return err
	}
	if err := where(unified.WithMode(ctx, unified.ReadWrite), "WithMode(ReadWrite)"); err != nil {
		return err
	}
	// Concurrent reads open several logical connections, spread over the
	// replicas.
	ro := unified.WithMode(ctx, unified.ReadOnly)
	conns := make([]*sql.Conn, 4)
	for i := range conns {
		if conns[i], err = db.Conn(ro); err != nil {
			return err
		}
	}
	for i, c := range conns {
		var port int
		if err := c.QueryRowContext(ro, "SELECT inet_server_port()").Scan(&port); err != nil {
			return err
		}
		fmt.Printf("  %-36s -> 127.0.0.1:%d (replica)\n", fmt.Sprintf("WithMode(ReadOnly), connection %d", i+1), port)
		c.Close()
	}
	fmt.Println("\nstopping the cluster")
	return nil
}
