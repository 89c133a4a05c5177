package patroni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/unifiedsql/unified/internal/childproc"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// dirPrefix names the cluster directories in Options.TempDir; Start sweeps
// those whose owner died.
const dirPrefix = "patroni-"

// proc is one started process: etcd, or the unshare at the root of a
// node's process tree.
type proc = childproc.Proc

// childEnv is the environment of etcd and Patroni: ours without the
// variables that would change what PostgreSQL's tools, Patroni or etcd do
// (PG*, PATRONI_*, ETCD*), with HOME set to a directory the server user
// owns and messages in English.
func childEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "PATRONI_") || strings.HasPrefix(k, "ETCD") ||
			k == "LC_ALL" || k == "LANG" || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C.UTF-8", "LANG=C.UTF-8", "HOME="+home)
}

// findUnshare returns the command prefix that runs a node in a PID
// namespace of its own, or nil when unshare (or, as root, setpriv) is
// missing or not permitted.
//
// Patroni starts PostgreSQL detached (setsid, re-parented to init) so that
// it survives Patroni; Pdeathsig on Patroni alone would leave every
// PostgreSQL of a killed test running. In a PID namespace Patroni is PID 1
// (it then forks its real work and reaps orphans, as in a container), and
// when that PID 1 dies the kernel kills every process of the namespace.
// PID 1 gets SIGKILL when unshare dies (its parent-death signal), and
// unshare dies with the test through Pdeathsig. As root, PID 1 becomes the
// server user through setpriv, which sets the parent-death signal again
// after the change of user (a change of user clears it, so unshare's own
// --setuid would leave PID 1 running after the test dies). The namespace
// gets its own /proc so that Patroni's psutil sees the PIDs PostgreSQL
// writes in postmaster.pid.
func (c *Cluster) findUnshare() []string {
	bin, err := exec.LookPath("unshare")
	if err != nil {
		return nil
	}
	args := []string{bin, "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"}
	if c.cred != nil {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			return nil
		}
		args = append(args, "--", setpriv, "--reuid="+strconv.Itoa(c.uid), "--regid="+strconv.Itoa(c.gid),
			"--init-groups", "--pdeathsig=SIGKILL")
	} else {
		args = append(args, "--user", "--map-current-user")
	}
	probe := exec.Command(args[0], append(args[1:], "--", "true")...)
	probe.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if out, err := probe.CombinedOutput(); err != nil {
		c.logf("patroni: %s: %v %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		return nil
	}
	return args
}

// startEtcd starts the single etcd member and waits until it is healthy.
func (c *Cluster) startEtcd(ctx context.Context) error {
	dir := filepath.Join(c.base, "etcd")
	if err := c.mkdirOwned(dir); err != nil {
		return err
	}
	logPath := filepath.Join(c.base, "etcd.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("patroni: %w", err)
	}
	defer logf.Close()
	client := c.EtcdURL()
	peer := "http://" + net.JoinHostPort(c.etcdHost(), strconv.Itoa(c.etcdPeer))
	args := []string{
		"--name", "etcd0",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "etcd0=" + peer, "--initial-cluster-state", "new",
		"--logger", "zap", "--log-level", "warn",
	}
	if c.opts.DCS == EtcdV2 {
		args = append(args, "--enable-v2=true")
	}
	argv, needCred := c.wrapEtcd(append([]string{c.etcdBin}, args...))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = childEnv(dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if needCred {
		cmd.SysProcAttr.Credential = c.cred
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errClosed
	}
	p, err := childproc.Start(cmd)
	if err == nil {
		c.etcd = p
	}
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("patroni: start etcd: %w", err)
	}
	health := "/health"
	if c.opts.DCS == EtcdV2 {
		health = "/v2/keys/"
	}
	for {
		if p.Exited() {
			return fmt.Errorf("patroni: etcd exited (%v); log:\n%s", p.Err(), childproc.FileTail(logPath, 20))
		}
		code, body, err := c.get(ctx, client+health)
		if err == nil && code == 200 && (health != "/health" || strings.Contains(string(body), `"true"`)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("patroni: etcd not healthy: %w; log:\n%s", ctx.Err(), childproc.FileTail(logPath, 20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startNode starts n's Patroni (in its own PID namespace when possible),
// which starts n's PostgreSQL.
func (c *Cluster) startNode(n *Node) error {
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("patroni: %w", err)
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "---- patroni test cluster: starting %s at %s\n", n.Name, time.Now().Format(time.RFC3339Nano))
	var args []string
	if c.unshare != nil {
		args = append(slices.Clone(c.unshare), "--")
	}
	args = append(args, c.patroni, n.configPath)
	args, needCred := c.wrapNode(n.Index, args, c.unshare == nil)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = n.home
	cmd.Env = childEnv(n.home)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if needCred {
		cmd.SysProcAttr.Credential = c.cred
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosed
	}
	if n.proc != nil && !n.proc.Exited() {
		return fmt.Errorf("patroni: %s is already running", n.Name)
	}
	p, err := childproc.Start(cmd)
	if err != nil {
		return fmt.Errorf("patroni: start %s: %w", n.Name, err)
	}
	n.proc, n.hung = p, false
	c.logf("patroni: %s started (pid %d, PostgreSQL port %d, REST port %d)", n.Name, p.PID, n.Port, n.RESTPort)
	return nil
}

// nodeExited returns an error with the log's tail if n's process tree has
// exited.
func (c *Cluster) nodeExited(n *Node) error {
	c.mu.Lock()
	p := n.proc
	c.mu.Unlock()
	if p != nil && p.Exited() {
		return fmt.Errorf("patroni: %s exited (%v); log:\n%s", n.Name, p.Err(), childproc.FileTail(n.logPath, 30))
	}
	return nil
}

// nodePIDs lists n's live processes below the root unshare, parents
// first: Patroni and, in the namespace, PostgreSQL with all its backends.
// Without a namespace PostgreSQL is not Patroni's descendant (it is
// detached): it is found through postmaster.pid.
func (c *Cluster) nodePIDs(n *Node, root int) []int {
	pids := childproc.Descendants(root)
	if c.unshare == nil {
		if pm := postmasterOf(n.DataDir); pm > 0 {
			pids = append(pids, pm)
			pids = append(pids, childproc.Descendants(pm)...)
		}
	}
	return pids
}

// signalNode sends sig to every process of n but the unshare at its root,
// repeating until no new process appears (a postmaster may fork a backend
// between the scan and its signal).
func (c *Cluster) signalNode(n *Node, sig syscall.Signal) error {
	c.mu.Lock()
	p := n.proc
	c.mu.Unlock()
	if p == nil || p.Exited() {
		return fmt.Errorf("patroni: %s is not running", n.Name)
	}
	done := map[int]bool{}
	for range 50 {
		fresh := false
		for _, pid := range c.nodePIDs(n, p.PID) {
			if !done[pid] {
				_ = syscall.Kill(pid, sig)
				done[pid], fresh = true, true
			}
		}
		if !fresh {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// kill SIGKILLs all of n's processes at once (a machine dies), waits until
// none is left and removes the System V segment the postmaster leaves.
func (c *Cluster) kill(n *Node) error {
	c.mu.Lock()
	p := n.proc
	n.hung = false
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	var extra func() []int
	if c.unshare == nil {
		extra = func() []int {
			pm := postmasterOf(n.DataDir)
			if pm <= 0 {
				return nil
			}
			return append([]int{pm}, childproc.Descendants(pm)...)
		}
	}
	err := killTree(p, extra)
	if err != nil {
		return fmt.Errorf("patroni: %s: %w", n.Name, err)
	}
	pgcluster.RemoveShm(n.DataDir)
	return nil
}

// killTree SIGKILLs p's descendants, its process group and the processes
// extra lists, until none is left, and then p itself, and waits for them.
// The descendants are signalled while they can still be found (before
// their parents die), and p, when it has any, gets a moment to reap them
// first: an unshare reaps the namespace's PID 1, which reaps the rest, and
// nothing is left as a zombie for an init that may never reap it.
func killTree(p *proc, extra func() []int) error {
	seen := map[int]bool{}
	start := time.Now()
	deadline := start.Add(15 * time.Second)
	rootGrace := time.Duration(0)
	for round := 0; ; round++ {
		var pids []int
		pids = append(pids, childproc.Descendants(p.PID)...)
		for _, pid := range childproc.GroupMembers(p.PID) {
			if pid != p.PID {
				pids = append(pids, pid)
			}
		}
		if extra != nil {
			pids = append(pids, extra()...)
		}
		if round == 0 && len(pids) > 0 {
			rootGrace = 2 * time.Second
		}
		var live []int
		for _, pid := range pids {
			if childproc.Alive(pid) && !slices.Contains(live, pid) {
				live = append(live, pid)
			}
		}
		for pid := range seen {
			if childproc.Alive(pid) && !slices.Contains(live, pid) {
				live = append(live, pid)
			}
		}
		if len(live) == 0 && p.Exited() {
			return nil
		}
		childproc.Kill(live)
		for _, pid := range live {
			seen[pid] = true
		}
		if !p.Exited() && time.Since(start) >= rootGrace {
			childproc.Kill([]int{p.PID})
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v do not exit", live)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// postmasterOf returns the pid in dataDir's postmaster.pid if that process
// is, in this PID namespace, a postgres server of dataDir; else 0. A
// postmaster in a node's own namespace records a pid of that namespace,
// which this check rejects.
func postmasterOf(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !strings.Contains(string(cmdline), dataDir) {
		return 0
	}
	return pid
}

// sweepStale removes the cluster directories in tmp whose owning process
// died without Close, after killing any process still working in one (a
// PID namespace dies with the test; this catches what outlived it, such
// as a PostgreSQL started without a namespace).
func sweepStale(tmp, self string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, dirPrefix+"*"))
	for _, d := range dirs {
		if d == self || !pgcluster.OwnerGone(d) {
			continue
		}
		logf("patroni: removing %s, left by a dead process", d)
		childproc.KillUntilGone(func() []int { return ProcessesIn(d) }, 5*time.Second, 10*time.Millisecond)
		datas, _ := filepath.Glob(filepath.Join(d, "node*", "data"))
		for _, data := range datas {
			pgcluster.RemoveShm(data)
		}
		_ = os.RemoveAll(d)
	}
}

// ProcessesIn lists the live processes whose working directory is in dir
// or whose command line names it: every process of a cluster whose
// directory dir is (PostgreSQL's processes run in their data directory,
// Patroni and etcd in their own directories, and their command lines name
// their configuration).
func ProcessesIn(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cwd, _ := os.Readlink("/proc/" + e.Name() + "/cwd")
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if (cwd == dir || strings.HasPrefix(cwd, dir+"/") || strings.Contains(string(cmd), dir+"/")) && childproc.Alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

var errClosed = errors.New("patroni: cluster is closed")
