package unified_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"

	"github.com/unifiedsql/unified"
)

// The mode travels in the context; a context without one runs in the
// default mode (read-write unless the DSN says otherwise).
func ExampleWithMode() {
	ctx := context.Background()
	m, ok := unified.ModeFrom(ctx)
	fmt.Println(m, ok)

	ro := unified.WithMode(ctx, unified.ReadOnly)
	m, ok = unified.ModeFrom(ro)
	fmt.Println(m, ok)

	// A statement run with ro goes to a replica:
	//   db.QueryContext(ro, "SELECT ...")
	// Output:
	// Mode(0) false
	// read-only true
}

func ExampleParseConfig() {
	cfg, err := unified.ParseConfig("postgres://app:s3cret@db1:5432,db2:5432/shop?sslmode=disable&unified_read_fallback=error&target_session_attrs=prefer-standby")
	if err != nil {
		log.Fatal(err)
	}
	for _, n := range cfg.Nodes() {
		fmt.Println("node", n.Name)
	}
	fmt.Println("default mode:", cfg.DefaultMode)
	fmt.Println("read fallback:", cfg.ReadFallback)

	_, err = unified.ParseConfig("postgres://app@db1/shop?unified_retry_max=many")
	fmt.Println(err)
	// Output:
	// node db1:5432
	// node db2:5432
	// default mode: read-only
	// read fallback: error
	// unified: invalid unified_retry_max "many": must be an integer >= 1
}

// RunTx re-runs the whole function when PostgreSQL rolled the transaction
// back (serialization failure, deadlock, connection lost before COMMIT),
// and never after a COMMIT of unknown outcome.
func ExampleRunTx() {
	db, err := sql.Open("unified", "postgres://app@db1,db2,db3/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	err = unified.RunTx(ctx, db, &sql.TxOptions{Isolation: sql.LevelSerializable}, func(tx *sql.Tx) error {
		var stock int
		if err := tx.QueryRowContext(ctx, "SELECT stock FROM items WHERE id = $1", 42).Scan(&stock); err != nil {
			return err
		}
		if stock == 0 {
			return errors.New("sold out")
		}
		_, err := tx.ExecContext(ctx, "UPDATE items SET stock = stock - 1 WHERE id = $1", 42)
		return err
	})
	switch {
	case errors.Is(err, unified.ErrCommitUnknown):
		// The order may or may not be placed: look before retrying.
	case err != nil:
		log.Print(err)
	}
}

// OpenDB applies the pool settings of the DSN, which sql.Open leaves to
// db.Set*.
func ExampleOpenDB() {
	cfg, err := unified.ParseConfig("postgres://app@db1,db2,db3/shop?unified_max_open_conns=20&unified_max_idle_conns=20")
	if err != nil {
		log.Fatal(err)
	}
	db, err := unified.OpenDB(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	rows, err := db.QueryContext(unified.WithMode(context.Background(), unified.ReadOnly), "SELECT id FROM items")
	if err != nil {
		log.Print(err)
		return
	}
	defer rows.Close()
}
