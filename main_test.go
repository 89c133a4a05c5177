package unified_test

import (
	"os"
	"testing"

	"github.com/unifiedsql/unified/internal/pgcluster"
)

// cluster is the package's real primary + 2 streaming replicas, started by
// the first pgcluster.Need (so tests that need none start no server) and
// closed after the tests. Without PostgreSQL the tests that need it fail with
// the install hint, or skip with UNIFIED_TEST_CLUSTER=skip. Tests that fault
// it restore it.
var cluster *pgcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(pgcluster.Main(m, pgcluster.Options{Replicas: 2}, &cluster))
}
