package pgtest

import (
	"testing"

	"go.uber.org/goleak"
)

// No shared cluster: each test that needs one starts its own with Start.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
