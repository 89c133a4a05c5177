package unified_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/internal/pgcluster"
)

// cluster is the package's real primary + 2 streaming replicas, started once
// in TestMain; nil when PostgreSQL is not installed (tests that need it skip,
// unless UNIFIED_TEST_CLUSTER=require). Tests that fault it restore it.
var cluster *pgcluster.Cluster

func TestMain(m *testing.M) {
	code := pgcluster.Main(m, pgcluster.Options{Replicas: 2}, &cluster)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
