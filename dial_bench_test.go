package unified_test

// What in_hot_standby saves per dial: the role of a node at connect time
// without a query (unified), against pgx's target_session_attrs=read-write,
// which runs SHOW transaction_read_only on every new connection.
//
//	go test -run '^$' -bench DialRoleCheck -benchtime 300x .

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/unifiedsql/unified/internal/pgcluster"
)

func BenchmarkDialRoleCheck(b *testing.B) {
	c := pgcluster.Need(b, cluster)
	ctx := context.Background()
	p, err := c.Primary(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct{ name, params string }{
		{"pgx-target_session_attrs=read-write", "&target_session_attrs=read-write"},
		{"in_hot_standby", ""},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg, err := pgx.ParseConfig(c.Node(p).DSN() + bc.params)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				conn, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					b.Fatal(err)
				}
				if bc.params == "" && conn.PgConn().ParameterStatus("in_hot_standby") != "off" {
					b.Fatal("in_hot_standby is not reported")
				}
				_ = conn.Close(ctx)
			}
		})
	}
}
