// Command pgtestdemo shows the test kit [github.com/unifiedsql/unified/pgtest]
// at work: it starts a local primary with two synchronous streaming
// replicas, writes through one *sql.DB from sql.Open("unified", ...), kills
// the primary (SIGKILL), fails over to the most advanced replica, shows the
// same *sql.DB writing to the new primary, and brings the old primary back
// as a replica.
//
//	go -C examples run ./pgtestdemo
//
// In a test the same calls take the test's *testing.T: pgtest.Start(t, ...).
// A program gets a testing.TB from [pgtest.Run]. It needs the PostgreSQL
// server binaries (Debian: apt-get install postgresql).
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/pgtest"
)

func main() {
	os.Exit(pgtest.Run("pgtestdemo", func(tb testing.TB) { run(tb, os.Stdout) }))
}

// result is what run saw.
type result struct {
	Acked   int           // INSERTs that returned nil
	Stored  int           // rows on the new primary at the end
	Resumed time.Duration // from the promotion to the first acknowledged write after it
}

func run(tb testing.TB, out io.Writer) result {
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	ctx := tb.Context()

	say("pgtest.Start: a primary and 2 synchronous replicas ...")
	c := pgtest.Start(tb, pgtest.Synchronous())
	for i := range c.Len() {
		say("  %v", c.Node(i))
	}
	db, err := sql.Open("unified", c.DSN()+"&unified_health_interval=100ms")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"); err != nil {
		tb.Fatal(err)
	}

	// One writer, an INSERT every 10 ms, each allowed 10 s (unified makes a
	// write wait for a new primary within its deadline).
	var (
		mu      sync.Mutex // protects acks and failed
		acks    []time.Time
		failed  []error
		writing sync.WaitGroup
	)
	stop := make(chan struct{})
	halt := sync.OnceFunc(func() { close(stop); writing.Wait() })
	defer halt()
	writing.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := db.ExecContext(wctx, "INSERT INTO events DEFAULT VALUES")
			cancel()
			mu.Lock()
			if err == nil {
				acks = append(acks, time.Now())
			} else {
				failed = append(failed, err)
			}
			mu.Unlock()
		}
	})
	acked := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acks)
	}
	time.Sleep(time.Second)
	say("writing through sql.Open(\"unified\", c.DSN()): %d INSERTs acknowledged", acked())

	old := c.Primary()
	killedAt := time.Now()
	c.Kill(old)
	say("c.Kill(%d): SIGKILL %s, the primary", old, c.Node(old).Name())
	p, err := c.FailOver()
	if err != nil {
		tb.Fatal(err)
	}
	promotedAt := c.Node(p).PromotedAt()
	say("c.FailOver(): %s promoted, accepting writes %v after the kill; the other replica follows it",
		c.Node(p).Name(), promotedAt.Sub(killedAt).Round(time.Millisecond))

	var first time.Time
	for deadline := time.Now().Add(10 * time.Second); first.IsZero() && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		for _, at := range acks {
			if !at.Before(promotedAt) {
				first = at
				break
			}
		}
		mu.Unlock()
	}
	if first.IsZero() {
		tb.Fatalf("no write acknowledged within 10 s of the promotion")
	}
	time.Sleep(500 * time.Millisecond)
	halt()
	res := result{Acked: acked(), Resumed: first.Sub(promotedAt)}
	say("writes resumed %v after the promotion, through the same *sql.DB", res.Resumed.Round(time.Millisecond))

	var port int
	if err := db.QueryRowContext(ctx, "SELECT count(*), inet_server_port() FROM events").Scan(&res.Stored, &port); err != nil {
		tb.Fatal(err)
	}
	unknown := 0
	for _, err := range failed {
		if errors.Is(err, unified.ErrCommitUnknown) {
			unknown++
		}
	}
	say("%d INSERTs acknowledged, %d rows on port %d (%s, the new primary); %d failed, %d of them with ErrCommitUnknown (they may be stored)",
		res.Acked, res.Stored, port, c.Node(p).Name(), len(failed), unknown)

	c.Rejoin(old)
	say("c.Rejoin(%d): %s is a replica of %s again", old, c.Node(old).Name(), c.Node(p).Name())
	return res
}
