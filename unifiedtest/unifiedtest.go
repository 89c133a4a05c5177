// Package unifiedtest builds a unified *sql.DB over go-sqlmock nodes, so that
// tests of code using unified can assert which node got which statement
// without a database.
//
// The DB has one primary and N replicas (default 2) with static roles: the
// health monitor is off, so no background query ever reaches a mock and
// sqlmock's ordered expectations hold. Each node's mock DSN stays open for
// the whole test, so sqlmock's "closing the last connection deletes the
// DSN" behaviour cannot bite.
//
//	db, mocks := unifiedtest.New(t)
//	mocks.Replica(0).ExpectQuery("SELECT name").WillReturnRows(sqlmock.NewRows([]string{"name"}).AddRow("ada"))
//	mocks.Primary().ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(1, 1))
//	// ... run the code under test ...
//	require.NoError(t, mocks.ExpectationsWereMet())
//
// Reads go to the replicas round-robin per new logical connection, and a
// logical connection keeps its replica while it stays eligible (as unified
// does in production), so sequential code that reuses one pooled connection
// reads from one replica. Use [Replicas](1) when a test should not care
// which replica serves a read.
package unifiedtest

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/unifiedsql/unified"
)

// Option configures New.
type Option func(*settings)

type settings struct {
	replicas int
	params   []string
	matcher  sqlmock.QueryMatcher
}

// Replicas sets the number of replica nodes (default 2; 0 is allowed: reads
// then follow unified_read_fallback).
func Replicas(n int) Option { return func(s *settings) { s.replicas = n } }

// Params adds unified_* DSN parameters, e.g. "unified_read_fallback=error".
func Params(params ...string) Option {
	return func(s *settings) { s.params = append(s.params, params...) }
}

// QueryMatcher sets sqlmock's query matcher for every node (default:
// sqlmock.QueryMatcherRegexp, as sqlmock.New).
func QueryMatcher(m sqlmock.QueryMatcher) Option { return func(s *settings) { s.matcher = m } }

// Mocks holds the sqlmock of every node.
type Mocks struct {
	primary  sqlmock.Sqlmock
	replicas []sqlmock.Sqlmock
}

// Primary returns the primary's mock.
func (m *Mocks) Primary() sqlmock.Sqlmock { return m.primary }

// Replica returns the mock of replica i (0-based). It panics when i is out
// of range, as a test bug.
func (m *Mocks) Replica(i int) sqlmock.Sqlmock { return m.replicas[i] }

// ExpectationsWereMet checks every node's expectations and joins the
// failures, each prefixed with its node.
func (m *Mocks) ExpectationsWereMet() error {
	var errs []error
	if err := m.primary.ExpectationsWereMet(); err != nil {
		errs = append(errs, fmt.Errorf("primary: %w", err))
	}
	for i, r := range m.replicas {
		if err := r.ExpectationsWereMet(); err != nil {
			errs = append(errs, fmt.Errorf("replica %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// T is the part of testing.TB that New uses; *testing.T and *testing.B
// satisfy it.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// dsnSeq makes every mock DSN of the process unique.
var dsnSeq atomic.Uint64

// New returns a unified DB over a mocked primary and replicas, closed at the
// end of the test, and the mocks. The primary's node is named
// "primary:5432", replica i's "replica<i>:5432" (they show in NodeError).
func New(t T, opts ...Option) (*sql.DB, *Mocks) {
	t.Helper()
	s := settings{replicas: 2, matcher: sqlmock.QueryMatcherRegexp}
	for _, o := range opts {
		o(&s)
	}
	names := []string{"primary"}
	for i := 0; i < s.replicas; i++ {
		names = append(names, fmt.Sprintf("replica%d", i))
	}
	mocks := &Mocks{}
	var nodeOpts []unified.Option
	var hosts []string
	for i, name := range names {
		dsn := fmt.Sprintf("unifiedtest-%d-%s", dsnSeq.Add(1), name)
		holder, mock, err := sqlmock.NewWithDSN(dsn, sqlmock.QueryMatcherOption(s.matcher))
		if err != nil {
			t.Fatalf("unifiedtest: sqlmock for %s: %v", name, err)
		}
		t.Cleanup(func() { holder.Close() })
		if i == 0 {
			mocks.primary = mock
		} else {
			mocks.replicas = append(mocks.replicas, mock)
		}
		node := name + ":5432"
		hosts = append(hosts, node)
		nodeOpts = append(nodeOpts, unified.WithNodeConnector(node, dsnConnector{dsn: dsn, drv: holder.Driver()}))
	}
	dsn := "postgres://unifiedtest@" + strings.Join(hosts, ",") + "/unifiedtest"
	if len(s.params) > 0 {
		dsn += "?" + strings.Join(s.params, "&")
	}
	cfg, err := unified.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("unifiedtest: %v", err)
	}
	nodeOpts = append(nodeOpts, unified.WithStaticPrimary(hosts[0]))
	db, err := unified.OpenDB(cfg, nodeOpts...)
	if err != nil {
		t.Fatalf("unifiedtest: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db, mocks
}

// dsnConnector opens connections of a driver that has no OpenConnector.
// It is a unified.ReadOnlyConnector whose read-only sessions are ordinary
// mock connections: a mock enforces nothing, and unified then sends no
// statement of its own to make a fallback read read-only, so that the
// mocks' ordered expectations see only the code under test.
type dsnConnector struct {
	dsn string
	drv driver.Driver
}

var _ unified.ReadOnlyConnector = dsnConnector{}

func (c dsnConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c dsnConnector) Driver() driver.Driver                        { return c.drv }

// ConnectReadOnly opens a mock connection like Connect.
func (c dsnConnector) ConnectReadOnly(ctx context.Context) (driver.Conn, error) {
	return c.Connect(ctx)
}
