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
)

// proc is one running postmaster.
type proc struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{} // closed when the postmaster has exited and been reaped
	err  error         // exit status, valid after done is closed
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the postmaster to exit.
func (p *proc) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

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
		return out.Bytes(), fmt.Errorf("pgcluster: %s failed: %w\n%s", name, err, tail(out.String(), 20))
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
	if n.proc != nil && !n.proc.exited() {
		return fmt.Errorf("pgcluster: %s is already running (pid %d)", n.Name, n.proc.pid)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgcluster: start %s: %w", n.Name, err)
	}
	p := &proc{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	n.proc = p
	n.pgid = p.pid
	n.hung = false
	c.logf("pgcluster: %s started, pid %d, port %d", n.Name, p.pid, n.Port)
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
	if p != nil && !p.exited() {
		return fmt.Errorf("pgcluster: %s is still running (pid %d)", n.Name, p.pid)
	}
	if pgid == 0 {
		return nil
	}
	return reapGroup(ctx, pgid, time.Second)
}

// reapGroup waits until process group pgid has no live (non-zombie)
// member; after grace it sends SIGCONT and SIGKILL to the group. It gives
// up after a few seconds more or when ctx ends.
func reapGroup(ctx context.Context, pgid int, grace time.Duration) error {
	start := time.Now()
	killed := false
	for {
		members := groupMembers(pgid)
		if len(members) == 0 {
			return nil
		}
		if !killed && time.Since(start) >= grace {
			_ = syscall.Kill(-pgid, syscall.SIGCONT)
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			killed = true
		}
		if time.Since(start) > grace+10*time.Second {
			return fmt.Errorf("pgcluster: processes %v of group %d do not exit", members, pgid)
		}
		select {
		case <-ctx.Done():
			if !killed {
				_ = syscall.Kill(-pgid, syscall.SIGCONT)
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				killed = true
				ctx = context.Background() // still wait for the kill to take effect
				continue
			}
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// groupMembers lists the live (not zombie) processes of process group pgid
// by scanning /proc. Zombies are ignored: orphans are reaped by init, which
// in some containers never happens.
func groupMembers(pgid int) []int {
	pids, ok := procsWhere(func(stat []string) bool {
		g, _ := strconv.Atoi(stat[2])
		return g == pgid
	})
	if !ok {
		// No /proc: fall back to kill(-pgid, 0), which counts zombies.
		if syscall.Kill(-pgid, 0) == nil {
			return []int{pgid}
		}
		return nil
	}
	return pids
}

// signalNode sends sig to n's postmaster, or with group to its whole
// process group.
func (c *Cluster) signalNode(n *Node, sig syscall.Signal, group bool) (*proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := n.proc
	if p == nil || p.exited() {
		return nil, fmt.Errorf("pgcluster: %s is not running", n.Name)
	}
	pid := p.pid
	if group {
		pid = -p.pid
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
		for _, child := range childrenOf(p.pid) {
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

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logTail returns the last lines of a node's server log.
func (n *Node) logTail(lines int) string {
	f, err := os.Open(n.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 8 << 10
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	b := make([]byte, st.Size()-off)
	nr, _ := f.ReadAt(b, off)
	return tail(string(b[:nr]), lines)
}

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

// childrenOf lists the live processes whose parent is ppid (none without
// /proc).
func childrenOf(ppid int) []int {
	pids, _ := procsWhere(func(stat []string) bool {
		pp, _ := strconv.Atoi(stat[1])
		return pp == ppid
	})
	return pids
}

// procsWhere lists the live (not zombie) processes whose /proc/PID/stat
// fields after the command name (state, ppid, pgrp, ...) satisfy match; ok
// is false when /proc cannot be read.
func procsWhere(match func(stat []string) bool) (pids []int, ok bool) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may contain anything.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if match(f) {
			pids = append(pids, pid)
		}
	}
	return pids, true
}

// resumeTree sends SIGCONT to the process group pgid and to each of kids
// (PostgreSQL's children are session leaders, outside that group), so that
// no process of a hung node stays stopped.
// waitGone waits until none of pids is alive, SIGKILLing those still
// alive after grace, and gives up a few seconds later.
func waitGone(pids []int, grace time.Duration) {
	start := time.Now()
	for len(pids) > 0 && time.Since(start) < grace+5*time.Second {
		live := pids[:0]
		for _, pid := range pids {
			if alive(pid) {
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

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func resumeTree(pgid int, kids []int) {
	_ = syscall.Kill(-pgid, syscall.SIGCONT)
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGCONT)
	}
}
