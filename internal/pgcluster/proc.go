package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/unifiedsql/unified/internal/childproc"
)

// proc is one running postmaster.
type proc = childproc.Proc

// sysProcAttr returns the attributes every child gets: its own process
// group, SIGKILL when this process dies, and the postgres user when root.
func (c *Cluster) sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: c.cred,
	}
}

// childEnv is the environment of every child: ours without PG* variables
// (PGDATA, PGPORT, PGOPTIONS... would change what the tools do) and with
// messages in English.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_ALL=") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// runTool runs a PostgreSQL client tool (initdb, pg_basebackup, pg_rewind)
// from the binary directory as the server user and returns its combined
// output. Cancelling ctx or closing the cluster kills its process group.
func (c *Cluster) runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errClosed
	}
	c.tools.Add(1)
	c.mu.Unlock()
	defer c.tools.Done()

	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = c.base
	cmd.Env = childEnv()
	cmd.SysProcAttr = c.sysProcAttr()
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	c.logf("pgcluster: %s %s", name, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgcluster: %s: %w", name, err)
	}
	c.mu.Lock()
	c.toolPGIDs[cmd.Process.Pid] = struct{}{}
	closed := c.closed
	c.mu.Unlock()
	if closed {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	err := cmd.Wait()
	c.mu.Lock()
	delete(c.toolPGIDs, cmd.Process.Pid)
	c.mu.Unlock()
	// A tool may leave children (pg_rewind runs "postgres --single").
	_ = reapGroup(context.Background(), cmd.Process.Pid, 0)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return out.Bytes(), fmt.Errorf("pgcluster: %s failed: %w\n%s", name, err, childproc.Tail(out.String(), 20))
	}
	return out.Bytes(), nil
}

// startProcess starts the postmaster of node n (not yet waiting for it to
// accept connections). Leftover processes of a previous postmaster on the
// same data directory are reaped first.
func (c *Cluster) startProcess(ctx context.Context, n *Node) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return errClosed
	}
	if err := c.reapNode(ctx, n); err != nil {
		return err
	}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgcluster: %s: %w", n.Name, err)
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "---- pgcluster: starting %s at %s\n", n.Name, time.Now().Format(time.RFC3339Nano))

	cmd := exec.Command(filepath.Join(c.bin, "postgres"),
		"-D", n.DataDir,
		"-p", strconv.Itoa(n.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "cluster_name="+n.Name,
	)
	cmd.Dir = c.base
	cmd.Env = childEnv()
	cmd.SysProcAttr = c.sysProcAttr()
	cmd.Stdout = logf
	cmd.Stderr = logf

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosed
	}
	if n.proc != nil && !n.proc.Exited() {
		return fmt.Errorf("pgcluster: %s is already running (pid %d)", n.Name, n.proc.PID)
	}
	p, err := childproc.Start(cmd)
	if err != nil {
		return fmt.Errorf("pgcluster: start %s: %w", n.Name, err)
	}
	n.proc = p
	n.pgid = p.PID
	n.hung = false
	c.logf("pgcluster: %s started, pid %d, port %d", n.Name, p.PID, n.Port)
	return nil
}

// reapNode makes sure nothing of an earlier postmaster of n is left: the
// postmaster itself must have exited (error otherwise), and its orphaned
// backends, which notice the postmaster's death only when they next wait,
// get a short grace period and are then killed.
func (c *Cluster) reapNode(ctx context.Context, n *Node) error {
	c.mu.Lock()
	p, pgid := n.proc, n.pgid
	c.mu.Unlock()
	if p != nil && !p.Exited() {
		return fmt.Errorf("pgcluster: %s is still running (pid %d)", n.Name, p.PID)
	}
	if pgid == 0 {
		return nil
	}
	return reapGroup(ctx, pgid, time.Second)
}

// reapGroup is childproc.ReapGroup with this package's prefix on its
// error.
func reapGroup(ctx context.Context, pgid int, grace time.Duration) error {
	if err := childproc.ReapGroup(ctx, pgid, grace); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// signalNode sends sig to n's postmaster, or with group to its whole
// process group.
func (c *Cluster) signalNode(n *Node, sig syscall.Signal, group bool) (*proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := n.proc
	if p == nil || p.Exited() {
		return nil, fmt.Errorf("pgcluster: %s is not running", n.Name)
	}
	pid := p.PID
	if group {
		pid = -p.PID
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return nil, fmt.Errorf("pgcluster: signal %v to %s: %w", sig, n.Name, err)
	}
	if group {
		// PostgreSQL's children (backends, walsenders, background
		// processes) each call setsid(): they are not in the
		// postmaster's process group, so signal them one by one. The
		// postmaster was signalled first, so it forks no new ones
		// after a SIGSTOP.
		for _, child := range childproc.ChildrenOf(p.PID) {
			_ = syscall.Kill(child, sig)
		}
	}
	switch sig {
	case syscall.SIGSTOP:
		n.hung = true
	case syscall.SIGCONT:
		n.hung = false
	}
	return p, nil
}

// logTail returns the last lines of a node's server log.
func (n *Node) logTail(lines int) string { return childproc.FileTail(n.logPath, lines) }

// logSize returns the current size of n's log (an offset for logSince).
func (n *Node) logSize() int64 {
	st, err := os.Stat(n.logPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// logSince returns n's log from offset off (at most the last 64 KiB).
func (n *Node) logSince(off int64) string {
	f, err := os.Open(n.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() <= off {
		return ""
	}
	if st.Size()-off > 64<<10 {
		off = st.Size() - 64<<10
	}
	b := make([]byte, st.Size()-off)
	nr, _ := f.ReadAt(b, off)
	return string(b[:nr])
}

// removeShm removes the System V shared memory segment named in the
// postmaster.pid of dataDir. A postmaster removes it (and the file) when it
// exits, even on SIGQUIT, but not when it is SIGKILLed; a restart on the
// same directory would, a deleted or rebuilt directory never does, and
// each leak uses up one of the system's SHMMNI segments. Call it only when
// the node's processes are gone. The segment is removed only if its key
// still maps to the recorded id.
func removeShm(dataDir string) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return
	}
	f := strings.Fields(lines[6]) // LOCK_FILE_LINE_SHMEM_KEY: "key id"
	if len(f) != 2 {
		return
	}
	key, err1 := strconv.ParseInt(f[0], 10, 32)
	id, err2 := strconv.ParseInt(f[1], 10, 32)
	if err1 != nil || err2 != nil || key <= 0 || id < 0 {
		return
	}
	got, _, errno := syscall.RawSyscall(syscall.SYS_SHMGET, uintptr(key), 0, 0)
	if errno != 0 || int64(got) != id {
		return
	}
	const ipcRMID = 0
	_, _, _ = syscall.RawSyscall(syscall.SYS_SHMCTL, uintptr(id), ipcRMID, 0)
}

// shmExists reports whether a System V segment with key exists.
func shmExists(key int64) bool {
	_, _, errno := syscall.RawSyscall(syscall.SYS_SHMGET, uintptr(key), 0, 0)
	return errno == 0
}

var errClosed = errors.New("pgcluster: cluster is closed")

// waitGone waits until none of pids is alive, SIGKILLing those still
// alive after grace, and gives up a few seconds later.
func waitGone(pids []int, grace time.Duration) {
	start := time.Now()
	for len(pids) > 0 && time.Since(start) < grace+5*time.Second {
		live := pids[:0]
		for _, pid := range pids {
			if childproc.Alive(pid) {
				live = append(live, pid)
			}
		}
		pids = live
		if time.Since(start) >= grace {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// resumeTree sends SIGCONT to the process group pgid and to each of kids
// (PostgreSQL's children are session leaders, outside that group), so that
// no process of a hung node stays stopped.
func resumeTree(pgid int, kids []int) {
	_ = syscall.Kill(-pgid, syscall.SIGCONT)
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGCONT)
	}
}
