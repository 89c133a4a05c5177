package unified

import (
	"errors"
	"fmt"
)

// Sentinel errors. Match them with errors.Is: the errors the package returns
// wrap them together with the node's own error.
var (
	// ErrNoPrimary: no node is the primary, and none became one within
	// unified_failover_timeout or the caller's deadline.
	ErrNoPrimary = errors.New("unified: no primary available")
	// ErrNoReplica: a ReadOnly statement found no eligible replica and
	// unified_read_fallback is "error".
	ErrNoReplica = errors.New("unified: no eligible replica")
	// ErrCircuitOpen: the node's circuit breaker is open; the call failed
	// fast without touching the network.
	ErrCircuitOpen = errors.New("unified: circuit breaker open")
	// ErrCommitUnknown: the connection broke after a COMMIT, or an autocommit
	// write, was sent. The write may or may not have been committed; it was
	// not re-sent. The caller must check before doing it again.
	ErrCommitUnknown = errors.New("unified: commit outcome unknown")
	// ErrAlreadyRegistered: Register was called with a name that is taken by
	// a different configuration.
	ErrAlreadyRegistered = errors.New("unified: name already registered")
	// ErrNotInTransaction: a Transactional statement was run outside a
	// transaction.
	ErrNotInTransaction = errors.New("unified: statement outside a transaction in transactional mode")
)

// NodeError is an error that happened on one node. Node is the node's
// address (host:port, never a password), Op what was being done ("connect",
// "exec", "query", "prepare", "begin", "commit", "rollback", "probe"...).
type NodeError struct {
	Node string
	Op   string
	Err  error
}

func (e *NodeError) Error() string {
	return fmt.Sprintf("unified: %s on %s: %v", e.Op, e.Node, e.Err)
}

// Unwrap returns the underlying error, so errors.Is and errors.As see both
// the sentinel (when one is wrapped) and the driver's error.
func (e *NodeError) Unwrap() error { return e.Err }
