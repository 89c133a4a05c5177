package pgcluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A cluster directory is swept when the process that made it is gone (its
// pid no longer runs, or runs another process, started at another time),
// and kept when its owner lives, when it has no owner file, and when it
// is this process's own.
func TestSweepStale(t *testing.T) {
	tmp := t.TempDir()
	mk := func(name, owner string) string {
		d := filepath.Join(tmp, name)
		require.NoError(t, os.MkdirAll(filepath.Join(d, "node0"), 0o755))
		if owner != "" {
			require.NoError(t, os.WriteFile(filepath.Join(d, ownerFile), []byte(owner), 0o644))
		}
		return d
	}
	dead := exec.Command("true")
	require.NoError(t, dead.Run()) // its pid runs nothing now
	me := os.Getpid()

	gone := mk("pgcluster-gone", fmt.Sprintf("%d %s\n", dead.Process.Pid, "1"))
	reused := mk("pgcluster-reused", fmt.Sprintf("%d %s\n", me, "0")) // this pid, another start time
	alive := mk("pgcluster-alive", fmt.Sprintf("%d %s\n", me, procStartTime(me)))
	unowned := mk("pgcluster-unowned", "")
	garbled := mk("pgcluster-garbled", "not a pid")
	self := mk("pgcluster-self", fmt.Sprintf("%d %s\n", dead.Process.Pid, "1"))

	for d, want := range map[string]bool{gone: true, reused: true, alive: false, unowned: false, garbled: false} {
		assert.Equal(t, want, OwnerGone(d), filepath.Base(d))
	}
	var logged []string
	sweepStale(tmp, self, func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) })
	for d, kept := range map[string]bool{gone: false, reused: false, alive: true, unowned: true, garbled: true, self: true} {
		_, err := os.Stat(d)
		assert.Equal(t, kept, err == nil, "%s kept", filepath.Base(d))
	}
	assert.Len(t, logged, 2)
	assert.Contains(t, logged, fmt.Sprintf("pgcluster: removing %s, left by dead process %d", gone, dead.Process.Pid))
}
