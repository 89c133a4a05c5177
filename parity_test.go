package unified

import (
	"database/sql/driver"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/stdlib"
)

// driverInterfaces lists every optional database/sql/driver interface a
// Conn or Stmt can implement.
var driverInterfaces = []reflect.Type{
	reflect.TypeFor[driver.Conn](),
	reflect.TypeFor[driver.ConnPrepareContext](),
	reflect.TypeFor[driver.ConnBeginTx](),
	reflect.TypeFor[driver.Execer](),
	reflect.TypeFor[driver.ExecerContext](),
	reflect.TypeFor[driver.Queryer](),
	reflect.TypeFor[driver.QueryerContext](),
	reflect.TypeFor[driver.Pinger](),
	reflect.TypeFor[driver.NamedValueChecker](),
	reflect.TypeFor[driver.SessionResetter](),
	reflect.TypeFor[driver.Validator](),
	reflect.TypeFor[driver.Stmt](),
	reflect.TypeFor[driver.StmtExecContext](),
	reflect.TypeFor[driver.StmtQueryContext](),
	reflect.TypeFor[driver.ColumnConverter](),
}

// TestInterfaceParity fails when pgx stdlib implements a driver interface, or
// an exported method, that the wrapper lacks, or when the wrapper adds one
// pgx does not have (Validator on Conn excepted: it is how stale physical
// connections are dropped).
func TestInterfaceParity(t *testing.T) {
	cases := []struct {
		name    string
		pgx     reflect.Type
		ours    reflect.Type
		extra   map[string]bool // our additions, by interface or method name
		pgxOnly map[string]bool // pgx methods that are pgx-specific, not driver API
	}{
		{
			name:    "Conn",
			pgx:     reflect.TypeFor[*stdlib.Conn](),
			ours:    reflect.TypeFor[*Conn](),
			extra:   map[string]bool{"driver.Validator": true, "IsValid": true, "StdlibConn": true, "Physical": true},
			pgxOnly: map[string]bool{"Conn": true},
		},
		{
			name: "Stmt",
			pgx:  reflect.TypeFor[*stdlib.Stmt](),
			ours: reflect.TypeFor[*stmt](),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, it := range driverInterfaces {
				theirs, mine := tc.pgx.Implements(it), tc.ours.Implements(it)
				switch {
				case theirs && !mine:
					t.Errorf("pgx %s implements %s, unified does not", tc.pgx, it)
				case mine && !theirs && !tc.extra[it.String()]:
					t.Errorf("unified %s implements %s, pgx does not (shadows pgx behaviour)", tc.ours, it)
				}
			}
			for i := 0; i < tc.pgx.NumMethod(); i++ {
				m := tc.pgx.Method(i)
				if tc.pgxOnly[m.Name] {
					continue
				}
				if _, ok := tc.ours.MethodByName(m.Name); !ok {
					t.Errorf("pgx %s has method %s, unified %s does not", tc.pgx, m.Name, tc.ours)
				}
			}
			for i := 0; i < tc.ours.NumMethod(); i++ {
				m := tc.ours.Method(i)
				if _, ok := tc.pgx.MethodByName(m.Name); !ok && !tc.extra[m.Name] {
					t.Errorf("unified %s has method %s that pgx %s lacks", tc.ours, m.Name, tc.pgx)
				}
			}
		})
	}
}
