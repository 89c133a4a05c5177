// Command statuspage serves the status page of [unified.HealthHandler]
// over a local cluster under a little traffic, through one failover, for
// a browser to watch.
//
//	go -C examples run ./statuspage [-addr 127.0.0.1:8080] [-duration 60s]
//
// The handler answers a browser (an Accept header that prefers text/html)
// with a page of the same data as its JSON: the nodes with their roles,
// states, lag, round trip, timeline, breaker and last error, the
// Connector's counters and the nodes' last state changes; it reloads
// itself every 2 seconds. Other clients (curl, a Kubernetes probe) get
// the JSON. Mounting it is one line:
//
//	http.Handle("/healthz", unified.HealthHandler(db))
//
// It starts a local primary with two synchronous streaming replicas
// ([github.com/unifiedsql/unified/pgtest]), serves the page on -addr, runs
// one writer and two ReadOnly readers, SIGKILLs the primary at a third of
// -duration and promotes the most advanced replica, brings the old primary
// back as a replica at two thirds, and stops at the end (or on Ctrl-C). It
// needs the PostgreSQL server binaries (Debian: apt-get install
// postgresql). The test loads the page in headless Chromium.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/examples/internal/demo"
	"github.com/unifiedsql/unified/examples/internal/scenario"
	"github.com/unifiedsql/unified/pgtest"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "where to serve the page")
	duration := flag.Duration("duration", 60*time.Second, "how long to run")
	flag.Parse()
	os.Exit(pgtest.Run("statuspage", func(tb testing.TB) {
		cl, db := start(tb, os.Stdout)
		ln, err := net.Listen("tcp", *addr)
		if err != nil {
			tb.Fatal(err)
		}
		srv := &http.Server{Handler: unified.HealthHandler(db), ReadHeaderTimeout: 5 * time.Second}
		var serving sync.WaitGroup
		serving.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				tb.Error(err)
			}
		})
		defer func() {
			_ = srv.Shutdown(context.Background())
			serving.Wait()
		}()
		fmt.Printf("\nopen http://%s/ in a browser (curl gets the JSON)\n\n", ln.Addr())
		stop := traffic(tb.Context(), db)
		defer stop()
		if !demo.Sleep(tb.Context(), *duration/3) {
			return
		}
		f := scenario.FailOver(tb, cl, os.Stdout)
		if !demo.Sleep(tb.Context(), *duration/3) {
			return
		}
		old := -1
		for i := range cl.Len() {
			if cl.Node(i).Name() == f.Killed {
				old = i
			}
		}
		cl.Rejoin(old)
		fmt.Printf(">>> %s rejoined as a replica\n", f.Killed)
		demo.Sleep(tb.Context(), *duration/3)
	}))
}

// start starts the cluster and opens a unified DB over it, closed by tb's
// cleanup; it waits for the first probe round.
func start(tb testing.TB, out io.Writer) (*pgtest.Cluster, *sql.DB) {
	fmt.Fprintln(out, "starting a local primary + 2 synchronous streaming replicas ...")
	cl := pgtest.Start(tb, pgtest.Synchronous())
	db, err := sql.Open("unified", cl.DSN()+"&unified_health_interval=100ms")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if _, err := db.ExecContext(tb.Context(), "CREATE TABLE ticks (at timestamptz NOT NULL DEFAULT now())"); err != nil {
		tb.Fatal(err)
	}
	return cl, db
}

// traffic runs one writer and two ReadOnly readers until the returned
// function is called.
func traffic(ctx context.Context, db *sql.DB) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	loop := func(op func(context.Context) error) {
		for ctx.Err() == nil {
			octx, done := context.WithTimeout(ctx, 10*time.Second)
			_ = op(octx) // the page shows what the driver makes of errors
			done()
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	wg.Go(func() {
		loop(func(ctx context.Context) error {
			_, err := db.ExecContext(ctx, "INSERT INTO ticks DEFAULT VALUES")
			return err
		})
	})
	for range 2 {
		wg.Go(func() {
			loop(func(ctx context.Context) error {
				var n int
				return db.QueryRowContext(unified.WithMode(ctx, unified.ReadOnly), "SELECT count(*) FROM ticks").Scan(&n)
			})
		})
	}
	return func() { cancel(); wg.Wait() }
}
