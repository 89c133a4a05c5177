// Command gorm uses GORM (gorm.io/gorm with gorm.io/driver/postgres)
// through unified, across a failover.
//
//	go -C examples run ./gorm
//
// GORM's postgres dialector takes unified in either of two ways:
//
//	gorm.Open(postgres.New(postgres.Config{DriverName: "unified", DSN: dsn}), cfg)
//	gorm.Open(postgres.New(postgres.Config{Conn: db}), cfg) // db from sql.Open("unified", dsn) or unified.OpenDB
//
// With DriverName GORM passes the DSN to sql.Open as it is, so unified_*
// parameters work; GORM's PreferSimpleProtocol and TimeZone are ignored on
// that path (put default_query_exec_mode=simple_protocol in the DSN). Server
// errors reach GORM as pgx's own *pgconn.PgError, so TranslateError turns
// them into gorm.ErrDuplicatedKey and gorm.ErrForeignKeyViolated, and
// PrepareStmt's cached statements are prepared again on each connection
// database/sql hands out, including the new primary's after a failover. A
// read goes to a replica with
//
//	db.WithContext(unified.WithMode(ctx, unified.ReadOnly)).Find(&rows)
//
// It starts a local primary with two synchronous streaming replicas
// ([github.com/unifiedsql/unified/pgtest]), runs AutoMigrate, creates
// authors with their books (an association), reads them back with Preload,
// runs a transaction, triggers both translated errors and reads on a
// replica; then SIGKILLs the primary while Create runs in transactions on
// the Conn-opened GORM DB, promotes the most advanced replica, and runs the
// same calls again on the same *gorm.DB. It needs the PostgreSQL server
// binaries (Debian: apt-get install postgresql).
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"testing"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/examples/internal/demo"
	"github.com/unifiedsql/unified/examples/internal/scenario"
	"github.com/unifiedsql/unified/pgtest"
)

func main() { demo.Main("gorm", run) }

// Author has many Books: AutoMigrate makes the foreign key.
type Author struct {
	ID    uint
	Name  string `gorm:"uniqueIndex;not null"`
	Books []Book
}

// Book belongs to an Author.
type Book struct {
	ID       uint
	Title    string `gorm:"not null"`
	AuthorID uint   `gorm:"not null"`
}

// Event is what the load writes during the failover.
type Event struct {
	ID uint
	N  int
}

// result is what run saw, for the test.
type result struct {
	Before, After steps
	Failover      scenario.Result
}

// steps is what one pass of the GORM calls returned.
type steps struct {
	Author        Author // read back with Preload("Books")
	TxBooks       int64  // books after the transaction
	Duplicate     error  // creating an author whose name exists
	ForeignKey    error  // a book of an author that does not exist
	ReadPort      int    // the node that served the ReadOnly read
	ReadOnReplica bool
}

// config is the same for both ways of opening.
var config = &gorm.Config{
	PrepareStmt:    true,                                  // cache prepared statements
	TranslateError: true,                                  // *pgconn.PgError -> gorm.ErrDuplicatedKey, ...
	Logger:         logger.Default.LogMode(logger.Silent), // the failed statements are on purpose
}

func run(tb testing.TB, out io.Writer) (*result, error) {
	ctx := tb.Context()
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	say("starting a local primary + 2 synchronous streaming replicas ...")
	cl := pgtest.Start(tb, pgtest.Synchronous())
	dsn := cl.DSN() + "&unified_health_interval=100ms"

	// One way: GORM opens the unified driver itself.
	db, err := gorm.Open(postgres.New(postgres.Config{DriverName: unified.DriverName, DSN: dsn}), config)
	if err != nil {
		return nil, err
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	defer sqlDB.Close()

	// The other: GORM over a *sql.DB the application opened.
	own, err := sql.Open("unified", dsn)
	if err != nil {
		return nil, err
	}
	defer own.Close()
	overConn, err := gorm.Open(postgres.New(postgres.Config{Conn: own}), config)
	if err != nil {
		return nil, err
	}

	// The migration runs with a session: a ReadOnly read with it runs only
	// where the new tables have been replayed (a replica may trail the
	// primary by the DDL itself), else on the primary.
	schema := unified.NewSession()
	if err := db.WithContext(unified.WithSession(ctx, schema)).AutoMigrate(&Author{}, &Book{}, &Event{}); err != nil {
		return nil, fmt.Errorf("AutoMigrate: %w", err)
	}
	say("AutoMigrate: authors, books (foreign key to authors), events")

	res := &result{}
	say("\nbefore the failover (postgres.Config{DriverName: \"unified\"}):")
	if res.Before, err = pass(ctx, db, cl, schema, "Le Guin", say); err != nil {
		return nil, err
	}

	say("\nthe failover, while Create runs on the GORM DB opened with postgres.Config{Conn: db}:")
	res.Failover = scenario.FailOverUnderLoad(tb, cl, out, func(ctx context.Context, i int) error {
		// Create runs in a transaction of its own (BEGIN, INSERT, COMMIT).
		return overConn.WithContext(ctx).Create(&Event{N: i}).Error
	})
	scenario.AwaitReplica(ctx, sqlDB, out)

	say("\nafter the failover, the same *gorm.DB:")
	if res.After, err = pass(ctx, db, cl, schema, "Butler", say); err != nil {
		return nil, err
	}
	return res, nil
}

// pass runs each GORM call once; name is the author it creates.
func pass(ctx context.Context, db *gorm.DB, cl *pgtest.Cluster, schema *unified.Session, name string, say func(string, ...any)) (steps, error) {
	var s steps
	db = db.WithContext(ctx)
	// An association: the author and its books in one Create.
	author := Author{Name: name, Books: []Book{{Title: "first"}, {Title: "second"}}}
	if err := db.Create(&author).Error; err != nil {
		return s, fmt.Errorf("Create with books: %w", err)
	}
	if err := db.Preload("Books").First(&s.Author, "name = ?", name).Error; err != nil {
		return s, fmt.Errorf("Preload: %w", err)
	}
	say("  Create + Preload    %s with %d books", s.Author.Name, len(s.Author.Books))

	// A transaction: both books or neither.
	err := db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(&Book{Title: "third", AuthorID: author.ID}).Error; err != nil {
			return err
		}
		return tx.Create(&Book{Title: "fourth", AuthorID: author.ID}).Error
	})
	if err != nil {
		return s, fmt.Errorf("Transaction: %w", err)
	}
	if err := db.Model(&Book{}).Where("author_id = ?", author.ID).Count(&s.TxBooks).Error; err != nil {
		return s, err
	}
	say("  Transaction         %s now has %d books", name, s.TxBooks)

	// TranslateError: pgx's *pgconn.PgError, as GORM's dialector expects.
	s.Duplicate = db.Create(&Author{Name: name}).Error
	s.ForeignKey = db.Create(&Book{Title: "orphan", AuthorID: 1 << 30}).Error
	say("  TranslateError      duplicate name: ErrDuplicatedKey %v; unknown author: ErrForeignKeyViolated %v",
		errors.Is(s.Duplicate, gorm.ErrDuplicatedKey), errors.Is(s.ForeignKey, gorm.ErrForeignKeyViolated))

	// A read a replica may serve.
	var port int
	if err := db.WithContext(unified.WithMode(ctx, unified.ReadOnly)).Raw("SELECT inet_server_port()").Scan(&port).Error; err != nil {
		return s, fmt.Errorf("ReadOnly: %w", err)
	}
	var authors int64
	if err := db.WithContext(unified.WithMode(unified.WithSession(ctx, schema), unified.ReadOnly)).Model(&Author{}).Count(&authors).Error; err != nil {
		return s, fmt.Errorf("ReadOnly Count: %w", err)
	}
	s.ReadPort, s.ReadOnReplica = port, scenario.IsReplica(cl, port)
	say("  ReadOnly            served by %s; %d authors (counted with the schema's session)", scenario.Served(cl, port), authors)
	return s, nil
}
