package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// cluster is a real primary + 2 streaming replicas, started by the first
// pgcluster.Need; without PostgreSQL the tests that need it fail, or skip
// with UNIFIED_TEST_CLUSTER=skip.
var cluster *pgcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(pgcluster.Main(m, pgcluster.Options{Replicas: 2}, &cluster))
}

func TestFormatTable(t *testing.T) {
	at := time.Date(2025, 1, 2, 15, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		h    unified.Health
		want string
	}{
		{
			name: "healthy",
			h: unified.Health{
				Primary: "db1:5432", Writable: true, Readable: true, At: at, Age: 212 * time.Millisecond,
				Nodes: []unified.NodeHealth{
					{Name: "db1:5432", Source: "dsn", Role: "primary", State: "up", RTT: 412345 * time.Nanosecond, Timeline: 3, Breaker: "closed"},
					{Name: "db2:5432", Source: "dsn", Role: "replica", State: "up", LagBytes: 8192, Lag: 12345 * time.Microsecond, RTT: 1234567 * time.Nanosecond, Timeline: 3, Breaker: "closed"},
					{Name: "db3:5432", Source: "dns", Role: "replica", State: "lagging", LagBytes: 3 << 20, Lag: 11 * time.Second, RTT: 2 * time.Millisecond, Timeline: 3, Breaker: "closed"},
				},
			},
			want: `+----------+--------+---------+---------+---------------+--------+----------+---------+------------+
| NODE     | SOURCE | ROLE    | STATE   | LAG           | RTT    | TIMELINE | BREAKER | LAST ERROR |
+----------+--------+---------+---------+---------------+--------+----------+---------+------------+
| db1:5432 | dsn    | primary | up      |               |  410µs |        3 | closed  |            |
| db2:5432 | dsn    | replica | up      | 8.0 KiB, 12ms | 1.23ms |        3 | closed  |            |
| db3:5432 | dns    | replica | lagging |  3.0 MiB, 11s |    2ms |        3 | closed  |            |
+----------+--------+---------+---------+---------------+--------+----------+---------+------------+
primary: db1:5432  writable: yes  readable: yes  topology age: 212ms
`,
		},
		{
			name: "primary down",
			h: unified.Health{
				Readable: true, At: at, Age: 5 * time.Millisecond,
				Nodes: []unified.NodeHealth{
					{Name: "db1:5432", Source: "dsn", Role: "primary", State: "down", RTT: time.Millisecond, Timeline: 1, Breaker: "open",
						LastError: "unified: probe on db1:5432: dial tcp 10.0.0.1:5432:\n connect: connection refused"},
					{Name: "db2:5432", Source: "dsn", Role: "replica", State: "up", RTT: time.Millisecond, Timeline: 1, Breaker: "closed"},
				},
			},
			want: `+----------+--------+---------+-------+-----+-----+----------+---------+-----------------------------------------------------+
| NODE     | SOURCE | ROLE    | STATE | LAG | RTT | TIMELINE | BREAKER | LAST ERROR                                          |
+----------+--------+---------+-------+-----+-----+----------+---------+-----------------------------------------------------+
| db1:5432 | dsn    | primary | down  |     |     |        1 | open    | dial tcp 10.0.0.1:5432: connect: connection refused |
| db2:5432 | dsn    | replica | up    |     | 1ms |        1 | closed  |                                                     |
+----------+--------+---------+-------+-----+-----+----------+---------+-----------------------------------------------------+
primary: none  writable: no  readable: yes  topology age: 5ms
`,
		},
		{
			name: "not probed",
			h: unified.Health{Nodes: []unified.NodeHealth{
				{Name: "db1:5432", Source: "dsn", Role: "unknown", State: "unknown", Breaker: "closed"},
			}},
			want: `+----------+--------+---------+---------+-----+-----+----------+---------+------------+
| NODE     | SOURCE | ROLE    | STATE   | LAG | RTT | TIMELINE | BREAKER | LAST ERROR |
+----------+--------+---------+---------+-----+-----+----------+---------+------------+
| db1:5432 | dsn    | unknown | unknown |     |     |          | closed  |            |
+----------+--------+---------+---------+-----+-----+----------+---------+------------+
primary: none  writable: no  readable: no  topology age: no probe yet
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, formatTable(tt.h))
		})
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		assert.Equal(t, want, formatBytes(n), "%d", n)
	}
}

// closedPortsDSN is a DSN over two loopback ports nothing listens on, with
// a password that must never be printed.
func closedPortsDSN(t *testing.T) string {
	t.Helper()
	var hosts []string
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		hosts = append(hosts, l.Addr().String())
		require.NoError(t, l.Close())
	}
	return "postgres://app:s3cret-pw@" + strings.Join(hosts, ",") + "/app?sslmode=disable&unified_health_timeout=200ms"
}

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     string
		wantErr string
	}{
		{name: "no DSN", wantErr: "no DSN"},
		{name: "two arguments", args: []string{"a", "b"}, wantErr: "one DSN expected"},
		{name: "bad flag", args: []string{"-bogus"}, wantErr: "-bogus"},
		{name: "bad interval", args: []string{"-interval", "0s", "postgres://h/db"}, wantErr: "-interval"},
		{name: "unknown unified parameter", env: "postgres://app:s3cret-pw@h/db?unified_bogus=1", wantErr: "unified_bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tt.args, tt.env, &stdout, &stderr)
			assert.Equal(t, exitUsageOrDSN, code)
			assert.Contains(t, stderr.String(), tt.wantErr)
			assert.NotContains(t, stderr.String(), "s3cret-pw")
			assert.Empty(t, stdout.String())
		})
	}
}

func TestRunWatchFrames(t *testing.T) {
	// Not a terminal: frames are separated by a blank line; the interrupt
	// ends the loop with the last frame's status.
	ctx, cancel := context.WithTimeout(t.Context(), 400*time.Millisecond)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"-watch", "-interval", "100ms", "-timeout", "1s"}, closedPortsDSN(t), &stdout, &stderr)
	assert.Equal(t, exitNoPrimary, code, "stderr: %s", &stderr)
	frames := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n\n")
	assert.GreaterOrEqual(t, len(frames), 2, "%s", &stdout)
	for _, f := range frames {
		assert.Contains(t, f, "primary: none  writable: no")
	}
	assert.NotContains(t, stdout.String(), "\x1b[")
	assert.NotContains(t, stdout.String(), "s3cret-pw")
}

// buildCommand builds the command into a temporary directory.
func buildCommand(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build with")
	}
	bin := filepath.Join(t.TempDir(), "unified")
	out, err := exec.CommandContext(t.Context(), gobin, "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// runCommand runs the built command and returns its output and exit status.
func runCommand(t *testing.T, bin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("run %s: %v", bin, err)
	}
	return o.String(), e.String(), code
}

func TestCommand(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	bin := buildCommand(t)
	primary, err := c.Primary(t.Context())
	require.NoError(t, err)

	t.Run("cluster", func(t *testing.T) {
		stdout, stderr, code := runCommand(t, bin, nil, c.DSN())
		require.Equal(t, exitWritable, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
		var nodes, primaries int
		for _, line := range strings.Split(stdout, "\n") {
			for i := range c.Len() {
				if strings.HasPrefix(line, "| "+c.Node(i).Addr()+" ") {
					nodes++
					if strings.Contains(line, "| primary |") {
						primaries++
						assert.Equal(t, primary, i, line)
					}
				}
			}
		}
		assert.Equal(t, 3, nodes, stdout)
		assert.Equal(t, 1, primaries, stdout)
		assert.Contains(t, stdout, "primary: "+c.Node(primary).Addr()+"  writable: yes")
	})

	t.Run("json", func(t *testing.T) {
		stdout, stderr, code := runCommand(t, bin, []string{"UNIFIED_DSN=" + c.DSN()}, "-json")
		require.Equal(t, exitWritable, code, "stderr: %s", stderr)
		var doc struct {
			Primary string `json:"primary"`
			Nodes   []struct {
				Name string `json:"name"`
			} `json:"nodes"`
		}
		require.NoError(t, json.Unmarshal([]byte(stdout), &doc), stdout)
		assert.Equal(t, c.Node(primary).Addr(), doc.Primary)
		assert.Len(t, doc.Nodes, 3)
	})

	t.Run("closed ports", func(t *testing.T) {
		start := time.Now()
		stdout, stderr, code := runCommand(t, bin, []string{"UNIFIED_DSN=" + closedPortsDSN(t)}, "-timeout", "2s")
		assert.Equal(t, exitNoPrimary, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
		assert.Less(t, time.Since(start), 10*time.Second)
		assert.Contains(t, stdout, "primary: none  writable: no")
		assert.Contains(t, stdout, "| down ")
		assert.NotContains(t, stdout+stderr, "s3cret-pw")
	})
}
