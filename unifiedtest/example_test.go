package unifiedtest_test

import (
	"context"
	"fmt"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/unifiedtest"
)

// exampleT stands in for the *testing.T a real test passes to New.
type exampleT struct{ cleanups []func() }

func (t *exampleT) Helper()                           {}
func (t *exampleT) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (t *exampleT) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) finish() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// A test asserts that a ReadOnly query went to a replica and a write to the
// primary: each expectation is set on the mock of the node that must get
// the statement.
func Example() {
	t := &exampleT{} // in a real test: the *testing.T
	defer t.finish()
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(1))
	ctx := context.Background()

	mocks.Replica(0).ExpectQuery("SELECT name FROM users").
		WillReturnRows(sqlmock.NewRows([]string{"name"}).AddRow("ada"))
	mocks.Primary().ExpectExec("UPDATE users").WithArgs("grace", 1).
		WillReturnResult(sqlmock.NewResult(0, 1))

	// The code under test:
	var name string
	if err := db.QueryRowContext(unified.WithMode(ctx, unified.ReadOnly), "SELECT name FROM users WHERE id = 1").Scan(&name); err != nil {
		panic(err)
	}
	if _, err := db.ExecContext(ctx, "UPDATE users SET name = $1 WHERE id = $2", "grace", 1); err != nil {
		panic(err)
	}

	fmt.Println("read from a replica:", name)
	fmt.Println("expectations met:", mocks.ExpectationsWereMet() == nil)
	// Output:
	// read from a replica: ada
	// expectations met: true
}
