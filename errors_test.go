package unified

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/unifiedsql/unified/internal/classify"
)

func TestNodeErrorHasOnePrefix(t *testing.T) {
	cause := errors.New("dial tcp 10.0.0.1:5432: connect: connection refused")
	for _, tc := range []struct {
		name string
		err  *NodeError
		want string
	}{
		{"plain", &NodeError{Node: "db1:5432", Op: "connect", Err: cause},
			"unified: connect on db1:5432: dial tcp 10.0.0.1:5432: connect: connection refused"},
		{"circuit open", &NodeError{Node: "db1:5432", Op: "connect", Err: fmt.Errorf("%w: %w", ErrCircuitOpen, cause)},
			"unified: connect on db1:5432: circuit breaker open: dial tcp 10.0.0.1:5432: connect: connection refused"},
		{"commit unknown", &NodeError{Node: "db1:5432", Op: "commit", Err: fmt.Errorf("%w: %w", ErrCommitUnknown, cause)},
			"unified: commit on db1:5432: commit outcome unknown: dial tcp 10.0.0.1:5432: connect: connection refused"},
		{"nil", &NodeError{Node: "db1:5432", Op: "exec"}, "unified: exec on db1:5432: <nil>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.err.Error())
			assert.Equal(t, 1, strings.Count(tc.err.Error(), "unified:"))
			if tc.err.Err != nil {
				assert.ErrorIs(t, tc.err, cause)
			}
		})
	}
}

func TestSentinelsStartWithThePackage(t *testing.T) {
	for _, err := range []error{ErrNoPrimary, ErrNoReplica, ErrCircuitOpen, ErrCommitUnknown, ErrAlreadyRegistered, ErrNotInTransaction, ErrClosed} {
		assert.True(t, strings.HasPrefix(err.Error(), "unified: "), err.Error())
	}
}

func TestHookErrorsCountOnlyWhenTheySaySo(t *testing.T) {
	plain := redactHook(errors.New("vault: lease expired"), nil)
	fault := redactHook(fmt.Errorf("token endpoint down: %w", ErrNodeFault), nil)
	netErr := redactHook(&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("refused")}, nil)
	assert.Equal(t, classify.Other, classOf(nil, plain))
	assert.Equal(t, classify.Other, classOf(nil, netErr), "a hook's own network error is not the node's")
	assert.Equal(t, classify.Connection, classOf(nil, fault))
	b := &breaker{}
	assert.Nil(t, b.outcome(nil, plain), "not a node fault")
	assert.Equal(t, errNodeFault, b.outcome(nil, fault))
	red := redactHook(errors.New("token s3cr3t rejected"), []string{"", "s3cr3t"})
	assert.Equal(t, "before connect: token xxxxx rejected", red.Error())
	assert.ErrorIs(t, fault, ErrNodeFault)
}
