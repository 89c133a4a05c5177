package pgtest_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	_ "github.com/unifiedsql/unified" // the "unified" driver

	"github.com/unifiedsql/unified/pgtest"
)

// testWritesSurviveFailover is what a test of a service's failover handling
// looks like; in a _test.go file it would be
// func TestWritesSurviveFailover(t *testing.T).
func testWritesSurviveFailover(t testing.TB) {
	c := pgtest.Start(t, pgtest.Synchronous())
	db, err := sql.Open("unified", c.DSN()+"&unified_health_interval=100ms")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE TABLE orders (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}

	c.Kill(c.Primary())
	p, err := c.FailOver()
	if err != nil {
		t.Fatal(err)
	}
	// The same *sql.DB finds the new primary by itself: the write waits
	// for it within its context's deadline.
	if _, err := db.ExecContext(ctx, "INSERT INTO orders VALUES (1)"); err != nil {
		t.Fatalf("write after the failover to %s: %v", c.Node(p).Name(), err)
	}
	fmt.Println("the write reached the new primary")
}

// Example runs a failover test outside `go test`, through Run.
func Example() {
	pgtest.Run("example", testWritesSurviveFailover)
}
