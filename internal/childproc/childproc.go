// Package childproc runs and reaps the child processes of the test
// clusters (internal/pgcluster, internal/patroni, internal/netns): a
// started process reaped by a goroutine of its own, the scans of /proc
// that find a process's children, descendants and process group, the
// SIGKILL loops that make sure none of them is left, the handler that
// stops a cluster on Ctrl-C, and the tail of a log for an error message.
// Linux only, as the clusters are.
package childproc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one started process, reaped by a goroutine of its own.
type Proc struct {
	PID  int
	done chan struct{} // closed once it has exited and been reaped
	err  error         // its exit status, valid after done
}

// Start starts cmd and reaps it in the background.
func Start(cmd *exec.Cmd) (*Proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{PID: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Done is closed once the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit status (cmd.Wait's error), valid after Done.
func (p *Proc) Err() error { return p.err }

// Exited reports whether the process has exited and been reaped.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to d for the process to exit; false when it still runs
// then, or when ctx ends first.
func (p *Proc) Wait(ctx context.Context, d time.Duration) bool {
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

// Where lists the live (not zombie) processes for which match, given the
// pid and the fields of /proc/PID/stat after the command name (state,
// ppid, pgrp, ...), is true; ok is false when /proc cannot be read.
func Where(match func(pid int, stat []string) bool) (pids []int, ok bool) {
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
		if match(pid, f) {
			pids = append(pids, pid)
		}
	}
	return pids, true
}

// ChildrenOf lists the live processes whose parent is ppid (none without
// /proc).
func ChildrenOf(ppid int) []int {
	pids, _ := Where(func(_ int, stat []string) bool {
		pp, _ := strconv.Atoi(stat[1])
		return pp == ppid
	})
	return pids
}

// GroupMembers lists the live (not zombie) processes of process group
// pgid by scanning /proc. Zombies are ignored: orphans are reaped by init,
// which in some containers never happens. Without /proc it falls back to
// kill(-pgid, 0), which counts zombies.
func GroupMembers(pgid int) []int {
	pids, ok := Where(func(_ int, stat []string) bool {
		g, _ := strconv.Atoi(stat[2])
		return g == pgid
	})
	if !ok {
		if syscall.Kill(-pgid, 0) == nil {
			return []int{pgid}
		}
		return nil
	}
	return pids
}

// Descendants lists the live descendants of pid (children, their children,
// ...), parents before their children, from one scan of /proc (none
// without /proc). A process whose parent died was re-parented and is no
// longer found.
func Descendants(pid int) []int {
	kids := map[int][]int{}
	Where(func(p int, stat []string) bool {
		pp, _ := strconv.Atoi(stat[1])
		kids[pp] = append(kids[pp], p)
		return false
	})
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, k := range kids[p] {
			out = append(out, k)
			queue = append(queue, k)
		}
	}
	return out
}

// Alive reports whether pid is a live (not zombie) process, from
// /proc/PID/stat: a missing one is a process gone (or no /proc); one that
// exists but cannot be read (EACCES) is asked with kill(pid, 0).
func Alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return syscall.Kill(pid, 0) == nil && !os.IsNotExist(err)
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(string(b[i+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// Kill sends SIGCONT (so that none of them stays stopped) and SIGKILL to
// each of pids.
func Kill(pids []int) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// KillUntilGone kills what list returns, every pause, until it returns
// nothing or within has passed. It reports whether list came back empty.
func KillUntilGone(list func() []int, within, pause time.Duration) bool {
	for deadline := time.Now().Add(within); ; {
		pids := list()
		if len(pids) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		Kill(pids)
		time.Sleep(pause)
	}
}

// ReapGroup waits until process group pgid has no live (non-zombie)
// member; after grace it sends SIGCONT and SIGKILL to the group. It gives
// up after ten seconds more, or when ctx ends (after killing the group
// and waiting for the kill to take effect).
func ReapGroup(ctx context.Context, pgid int, grace time.Duration) error {
	start := time.Now()
	killed := false
	kill := func() {
		_ = syscall.Kill(-pgid, syscall.SIGCONT)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		killed = true
	}
	for {
		members := GroupMembers(pgid)
		if len(members) == 0 {
			return nil
		}
		if !killed && time.Since(start) >= grace {
			kill()
		}
		if time.Since(start) > grace+10*time.Second {
			return fmt.Errorf("processes %v of group %d do not exit", members, pgid)
		}
		select {
		case <-ctx.Done():
			if !killed {
				kill()
				ctx = context.Background() // still wait for the kill to take effect
				continue
			}
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// OnInterrupt calls f, in a goroutine of its own, if the process gets
// SIGINT or SIGTERM before stop is called: a test binary stopped by Ctrl-C
// then closes its cluster (f usually ends with os.Exit) instead of leaving
// its servers running. stop stops listening and, when f has begun, waits
// for it to return; call it once.
func OnInterrupt(f func(os.Signal)) (stop func()) {
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case sig := <-sigc:
			f(sig)
		case <-done:
		}
	})
	return func() {
		signal.Stop(sigc)
		close(done)
		wg.Wait()
	}
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FileTail returns the last lines of a file (from its last 16 KiB), ""
// when it cannot be read.
func FileTail(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-16<<10, 0)
	b, _ := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	return Tail(string(b), lines)
}
