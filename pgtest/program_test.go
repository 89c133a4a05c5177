package pgtest

import (
	"bytes"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	tests := []struct {
		name    string
		f       func(tb testing.TB, trace *[]string)
		code    int
		trace   []string
		printed string
	}{
		{
			name: "passes",
			f: func(tb testing.TB, trace *[]string) {
				tb.Cleanup(func() { *trace = append(*trace, "cleanup 1") })
				tb.Cleanup(func() { *trace = append(*trace, "cleanup 2") })
				tb.Logf("hello %d", 1)
				*trace = append(*trace, "end")
			},
			code:    0,
			trace:   []string{"end", "cleanup 2", "cleanup 1"},
			printed: "prog: hello 1\n",
		},
		{
			name: "fatal ends f, deferred calls and cleanups run",
			f: func(tb testing.TB, trace *[]string) {
				tb.Cleanup(func() { *trace = append(*trace, "cleanup") })
				defer func() { *trace = append(*trace, "deferred") }()
				tb.Fatalf("broken: %v", "x")
				*trace = append(*trace, "after Fatal")
			},
			code:    1,
			trace:   []string{"deferred", "cleanup"},
			printed: "prog: broken: x\n",
		},
		{
			name: "error goes on",
			f: func(tb testing.TB, trace *[]string) {
				tb.Error("bad")
				*trace = append(*trace, "after Error")
				*trace = append(*trace, map[bool]string{true: "failed"}[tb.Failed()])
			},
			code:  1,
			trace: []string{"after Error", "failed"},
		},
		{
			name: "skip is not a success",
			f: func(tb testing.TB, trace *[]string) {
				tb.Skip("no cluster")
				*trace = append(*trace, "after Skip")
			},
			code:    1,
			printed: "prog: no cluster\n",
		},
		{
			name: "a cleanup that fails",
			f: func(tb testing.TB, trace *[]string) {
				tb.Cleanup(func() { *trace = append(*trace, "first registered") })
				tb.Cleanup(func() { tb.Fatal("close failed"); *trace = append(*trace, "after Fatal") })
			},
			code:  1,
			trace: []string{"first registered"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			var trace []string
			code := run("prog", &out, func(tb testing.TB) { tt.f(tb, &trace) })
			assert.Equal(t, tt.code, code)
			assert.Equal(t, tt.trace, trace)
			if tt.printed != "" {
				assert.Equal(t, tt.printed, out.String())
			}
		})
	}
}

func TestRunEnvironment(t *testing.T) {
	const key = "PGTEST_RUN_SETENV"
	var dir string
	code := run("prog", &bytes.Buffer{}, func(tb testing.TB) {
		assert.Equal(t, "prog", tb.Name())
		require.NoError(t, tb.Context().Err())
		tb.Setenv(key, "set")
		assert.Equal(t, "set", os.Getenv(key))
		dir = tb.TempDir()
		assert.DirExists(t, dir)
	})
	assert.Zero(t, code)
	_, had := os.LookupEnv(key)
	assert.False(t, had, "Setenv undone")
	assert.NoDirExists(t, dir, "TempDir removed")
}

// TestStartWithoutBinaries: a run that cannot start the cluster fails,
// saying how to skip, unless UNIFIED_TEST_CLUSTER=skip.
func TestStartWithoutBinaries(t *testing.T) {
	t.Setenv("UNIFIED_PG_BIN", "/nonexistent")
	for _, env := range []string{"", "require"} {
		t.Run("env="+env, func(t *testing.T) {
			t.Setenv("UNIFIED_TEST_CLUSTER", env)
			var out bytes.Buffer
			reached := false
			code := run("prog", &out, func(tb testing.TB) {
				Start(tb)
				reached = true
			})
			assert.Equal(t, 1, code)
			assert.False(t, reached)
			assert.Contains(t, out.String(), "pgtest: no PostgreSQL cluster")
			assert.Contains(t, out.String(), "UNIFIED_PG_BIN=/nonexistent")
		})
	}
	t.Run("env=skip", func(t *testing.T) {
		t.Setenv("UNIFIED_TEST_CLUSTER", "skip")
		reached := false
		ok := t.Run("start", func(t *testing.T) {
			Start(t)
			reached = true
		})
		assert.True(t, ok, "a skipped test does not fail")
		assert.False(t, reached, "Start skipped the test")
	})
}
