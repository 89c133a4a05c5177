package pgcluster

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// The helpers below let other test-cluster packages (internal/patroni) run
// servers the way pgcluster does: as the postgres user when root, on a
// tmpfs, with stale directories swept, shared memory removed and process
// groups reaped: most wrap pgcluster's own unexported functions, some
// (ServerUser) are the implementation that Start calls too.

// DefaultTempDir returns where a cluster's temporary directory goes by
// default: /dev/shm when it is a writable tmpfs with at least 1 GiB free,
// else os.TempDir().
func DefaultTempDir() string { return defaultTempDir() }

// FreePorts returns n distinct loopback ports that were free a moment ago
// (listened on and closed: another process may take one before it is used).
func FreePorts(n int) ([]int, error) { return freePorts(n) }

// ServerUser returns the credential, uid and gid to run servers with when
// this process is root: those of the "postgres" user, with its own
// supplementary groups (PostgreSQL refuses to run as root). When not root
// it returns nil, -1, -1 and no error: servers run as the current user.
func ServerUser() (cred *syscall.Credential, uid, gid int, err error) {
	if os.Geteuid() != 0 {
		return nil, -1, -1, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, -1, -1, fmt.Errorf("running as root needs a \"postgres\" user to run the servers as (PostgreSQL refuses to run as root): %w", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.Atoi(id); err == nil {
				groups = append(groups, uint32(g))
			}
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}, uid, gid, nil
}

// Searchable checks that another user (the server user) can reach dir:
// dir and each of its parents must be searchable by others.
func Searchable(dir string) error { return searchable(dir) }

// MarkOwner writes into dir a file naming this process (pid and start
// time), which OwnerGone reads.
func MarkOwner(dir string) error { return writeOwner(dir) }

// OwnerGone reports whether dir was marked by MarkOwner for a process that
// has since exited (its pid is gone or now belongs to another process). It
// is false when dir has no owner file, when the owner lives, and when /proc
// cannot tell.
func OwnerGone(dir string) bool {
	_, gone := ownerGone(dir)
	return gone
}

// ownerGone is OwnerGone, with the pid of the process that made dir.
func ownerGone(dir string) (pid int, gone bool) {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return 0, false // not a cluster's directory, or being created
	}
	var start string
	if n, _ := fmt.Sscanf(string(b), "%d %s", &pid, &start); n < 1 || pid <= 0 {
		return 0, false
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		return pid, false // cannot tell
	}
	st := procStartTime(pid)
	return pid, st == "" || st != start
}

// RemoveShm removes the System V shared memory segment recorded in the
// postmaster.pid of dataDir, which a SIGKILLed postmaster leaves behind.
// Call it only when no process of that server is left.
func RemoveShm(dataDir string) { removeShm(dataDir) }
