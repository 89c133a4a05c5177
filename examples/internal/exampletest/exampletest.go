// Package exampletest runs an example in its test as the command runs it,
// with what the example printed in the test's log.
package exampletest

import (
	"bytes"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// Output returns the buffer for what the example prints; t logs it when
// it ends.
func Output(t *testing.T) *bytes.Buffer {
	var out bytes.Buffer
	t.Cleanup(func() { t.Log("\n" + out.String()) })
	return &out
}

// Run runs the example's run function with t and an Output, as
// demo.Main runs it in the command, requires it to succeed, and returns
// its result.
func Run[R any](t *testing.T, run func(tb testing.TB, out io.Writer) (R, error)) R {
	t.Helper()
	res, err := run(t, Output(t))
	require.NoError(t, err)
	return res
}
