package main

import (
	"bytes"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/unifiedsql/unified/internal/pgcluster"
)

// hang makes node i a hung host: every process of the server stopped,
// TCP handshakes still completed by the kernel, nothing answering.
//
// pgcluster.Hang alone is not enough: it SIGSTOPs the postmaster's process
// group, but PostgreSQL makes every child (backends, walsenders, walwriter)
// the leader of a process group of its own (setsid in
// InitPostmasterChild), so they would keep serving queries and streaming
// WAL. hang stops the postmaster first (no new children), then each child,
// and returns the children for resume.
func hang(cl *pgcluster.Cluster, i int) ([]int, error) {
	if err := cl.Hang(i); err != nil {
		return nil, err
	}
	var stopped []int
	pm := cl.PID(i)
	for range 2 { // a second pass catches a child forked during the first
		for _, pid := range children(pm) {
			if !slices.Contains(stopped, pid) && syscall.Kill(pid, syscall.SIGSTOP) == nil {
				stopped = append(stopped, pid)
			}
		}
	}
	return stopped, nil
}

// resume undoes hang.
func resume(cl *pgcluster.Cluster, i int, kids []int) error {
	for _, pid := range kids {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	return cl.Continue(i)
}

// children lists the processes whose parent is pid, from /proc.
func children(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may hold anything, so parse
		// after its closing parenthesis.
		j := bytes.LastIndexByte(b, ')')
		if j < 0 {
			continue
		}
		f := strings.Fields(string(b[j+1:]))
		if len(f) >= 2 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}
