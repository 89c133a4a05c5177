// Package pgcluster starts a real local PostgreSQL cluster, a primary and N
// streaming replicas, for integration tests and the failover demo, and
// injects faults into it: crash (SIGKILL), hang (SIGSTOP), stop, promote,
// re-point standbys, rejoin an old primary, pause replay, synchronous
// replication and pg_hba.conf changes.
//
// The nodes run from the local server binaries (see FindBinDir) on free
// loopback ports in a temporary directory (on /dev/shm when possible, see
// Options.TempDir) holding each node's data directory and server log
// (nodeN.log). When the test runs as root the server processes run as the
// "postgres" user. Every postmaster is started directly (not through
// pg_ctl) in its own process group and dies with the test process
// (Pdeathsig), so a crashed test leaves no server behind. Close stops
// everything and removes the directory; the next Start removes directories
// whose owning process died without Close. Shared memory does not leak
// either: dynamic shared memory lives in the data directory, and the System
// V segment a SIGKILLed postmaster leaves is removed when its node is
// closed or rebuilt.
//
// Node 0 is created by initdb and starts as the primary; nodes 1..N are
// pg_basebackup copies streaming from it, with application_name "nodeN".
// Settings are test-oriented: fsync=off but synchronous_commit=on and
// full_page_writes=on (so acknowledged commits survive a process crash and
// pg_rewind works), wal_log_hints=on, wal_retrieve_retry_interval=200ms.
//
// Methods are safe for concurrent use, but faulting the same node from two
// goroutines at once gives whatever order the signals arrive in. Methods
// taking a context honour it; those without one bound their waits
// internally. Node indexes out of range give an error (Node returns nil).
//
// Use Main in TestMain to share one cluster per test package, Need in each
// test that needs it (the first Need starts it, so tests that need none
// start no server), and Restore after a test that changed the topology.
// Without a cluster, tests fail unless $UNIFIED_TEST_CLUSTER is "skip"
// (see Decide). The public package pgtest is a façade over this one for
// users' tests.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/unifiedsql/unified/internal/childproc"
)

// Options configure Start.
type Options struct {
	// Replicas is the number of streaming replicas. 0 means the default, 2;
	// a negative value means none (a lone primary).
	Replicas int
	// BinDir holds the server binaries (postgres, initdb, pg_basebackup,
	// pg_rewind). Default: FindBinDir().
	BinDir string
	// Synchronous starts the primary with
	// synchronous_standby_names = 'ANY 1 (*)' (set once the replicas stream).
	Synchronous bool
	// ExtraConf lines are appended to postgresql.conf of every node.
	ExtraConf []string
	// Logf receives progress and diagnostics. Default: discard.
	Logf func(format string, args ...any)
	// TempDir is where the cluster's temporary directory is created.
	// Default: /dev/shm when it is a tmpfs with at least 1 GiB free (file
	// creation on a disk file system makes initdb and pg_basebackup several
	// times slower), else os.TempDir().
	TempDir string
}

// Cluster is a running local PostgreSQL cluster. Create it with Start and
// always Close it.
type Cluster struct {
	opts  Options
	bin   string
	base  string
	cred  *syscall.Credential // nil when not running as root
	uid   int                 // owner of data files, -1 = don't chown
	gid   int
	nodes []*Node
	logf  func(format string, args ...any)

	mu        sync.Mutex // guards closed, toolPGIDs and the nodes' proc/pgid/hung
	closed    bool
	closeDone chan struct{} // closed when the first Close has finished
	closeErr  error
	toolPGIDs map[int]struct{}
	tools     sync.WaitGroup
}

// Node is one server of the cluster. Its fields describe where it lives and
// do not change; do not modify them.
type Node struct {
	Index   int    // position in the cluster, 0..Len()-1
	Name    string // "node0", "node1", ...; also its application_name and cluster_name
	Host    string // always 127.0.0.1
	Port    int    // TCP port, fixed for the cluster's life
	DataDir string // data directory

	logPath string
	proc    *proc // current postmaster, nil before the first start
	pgid    int   // process group of the last postmaster started
	hung    bool  // SIGSTOPped by Hang
}

// Addr returns "127.0.0.1:port".
func (n *Node) Addr() string { return net.JoinHostPort(n.Host, strconv.Itoa(n.Port)) }

// DSN returns a URL connecting to this node only, as user postgres (trust
// authentication, no password) to database postgres, without TLS.
func (n *Node) DSN() string { return URL([]string{n.Addr()}) }

// LogPath returns the path of the node's server log (stdout and stderr of
// every postmaster started for it).
func (n *Node) LogPath() string { return n.logPath }

// FindBinDir locates the PostgreSQL server binaries: $UNIFIED_PG_BIN if set,
// else `pg_config --bindir` if that directory holds postgres and initdb,
// else the highest /usr/lib/postgresql/*/bin. The error says what to install.
func FindBinDir() (string, error) {
	if v := os.Getenv("UNIFIED_PG_BIN"); v != "" {
		if err := checkBinDir(v); err != nil {
			return "", fmt.Errorf("UNIFIED_PG_BIN=%s: %w", v, err)
		}
		return v, nil
	}
	if pgc, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgc, "--bindir").Output(); err == nil {
			if dir := strings.TrimSpace(string(out)); dir != "" && checkBinDir(dir) == nil {
				return dir, nil
			}
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(a, b int) bool { return pgVersion(dirs[a]) > pgVersion(dirs[b]) })
	for _, d := range dirs {
		if checkBinDir(d) == nil {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries found (looked at $UNIFIED_PG_BIN, `pg_config --bindir`, /usr/lib/postgresql/*/bin): " +
		`install them ("apt-get install postgresql" on Debian/Ubuntu) or set UNIFIED_PG_BIN to the directory holding postgres and initdb`)
}

func pgVersion(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

func checkBinDir(dir string) error {
	for _, name := range []string{"postgres", "initdb", "pg_basebackup"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("no %s in %s", name, dir)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s in %s is not executable", name, dir)
		}
	}
	return nil
}

// Start creates and starts a cluster: node 0 is initialised with initdb
// and started as the primary, nodes 1..Replicas are copied from it with
// pg_basebackup and started as standbys streaming from it. It returns when
// every node accepts connections and every replica streams. On failure
// everything started so far is stopped and removed; the error includes the
// tail of the failing node's log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Replicas == 0 {
		opts.Replicas = 2
	} else if opts.Replicas < 0 {
		opts.Replicas = 0
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.BinDir == "" {
		dir, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		opts.BinDir = dir
	}
	if err := checkBinDir(opts.BinDir); err != nil {
		return nil, err
	}
	t0 := time.Now()
	c := &Cluster{opts: opts, bin: opts.BinDir, logf: opts.Logf, toolPGIDs: map[int]struct{}{}}
	var err error
	if c.cred, c.uid, c.gid, err = ServerUser(); err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if opts.TempDir == "" {
		opts.TempDir = defaultTempDir()
	}
	base, err := os.MkdirTemp(opts.TempDir, "pgcluster-")
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	c.base = base
	if err := writeOwner(base); err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	sweepStale(opts.TempDir, base, c.logf)
	ok := false
	defer func() {
		if !ok {
			_ = c.Close()
		}
	}()
	if err := os.Chmod(base, 0o755); err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if c.cred != nil {
		if err := searchable(filepath.Dir(base)); err != nil {
			return nil, err
		}
	}
	ports, err := freePorts(opts.Replicas + 1)
	if err != nil {
		return nil, err
	}
	for i, port := range ports {
		name := "node" + strconv.Itoa(i)
		n := &Node{Index: i, Name: name, Host: "127.0.0.1", Port: port,
			DataDir: filepath.Join(base, name), logPath: filepath.Join(base, name+".log")}
		c.nodes = append(c.nodes, n)
		if err := c.mkDataDir(n); err != nil {
			return nil, err
		}
	}
	if err := c.initPrimary(ctx, c.nodes[0]); err != nil {
		return nil, err
	}
	c.logf("pgcluster: primary %s ready on port %d after %v", c.nodes[0].Name, c.nodes[0].Port, time.Since(t0).Round(time.Millisecond))
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i := 1; i < len(c.nodes); i++ {
		wg.Go(func() { errs[i] = c.cloneStandby(ctx, i, 0) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if opts.Synchronous {
		if err := c.SetSynchronous(ctx, 0, true); err != nil {
			return nil, err
		}
	}
	c.logf("pgcluster: cluster of %d nodes ready in %v (dir %s)", len(c.nodes), time.Since(t0).Round(time.Millisecond), base)
	ok = true
	return c, nil
}

// ownerFile, in the cluster's directory, names the process that owns it:
// "pid starttime" (starttime from /proc/pid/stat tells a reused pid apart).
const ownerFile = "pgcluster.owner"

func procStartTime(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

func writeOwner(base string) error {
	me := os.Getpid()
	content := fmt.Sprintf("%d %s\n", me, procStartTime(me))
	if err := os.WriteFile(filepath.Join(base, ownerFile), []byte(content), 0o644); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// sweepStale removes the directories of clusters whose owning process has
// died without Close (a test panicked or timed out; its servers died with
// it through Pdeathsig, but the directory stayed, possibly in /dev/shm).
func sweepStale(tmp, self string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, "pgcluster-*"))
	for _, d := range dirs {
		if d == self {
			continue
		}
		pid, gone := ownerGone(d)
		if !gone {
			continue
		}
		logf("pgcluster: removing %s, left by dead process %d", d, pid)
		nodes, _ := filepath.Glob(filepath.Join(d, "node*"))
		for _, dir := range nodes {
			removeShm(dir)
		}
		_ = os.RemoveAll(d)
	}
}

// searchable checks that the server user can reach dir: dir and its
// parents must be searchable by others (a t.TempDir() is not: it is 0700).
func searchable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("pgcluster: %s (mode %v) is not searchable by the postgres user; use a TempDir whose parents are world-searchable (0755)", d, st.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// defaultTempDir: /dev/shm if it is a roomy tmpfs, else os.TempDir().
func defaultTempDir() string {
	const tmpfsMagic = 0x01021994
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err == nil && st.Type == tmpfsMagic &&
		uint64(st.Bavail)*uint64(st.Bsize) >= 1<<30 && syscall.Access("/dev/shm", 2 /* W_OK */) == nil {
		return "/dev/shm"
	}
	return os.TempDir()
}

// freePorts returns n distinct free loopback ports (listen on :0, close).
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pgcluster: no free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// mkDataDir (re)creates n's empty data directory, mode 0700, owned by the
// server user.
func (c *Cluster) mkDataDir(n *Node) error {
	removeShm(n.DataDir)
	if err := os.RemoveAll(n.DataDir); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := os.Mkdir(n.DataDir, 0o700); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.chown(n.DataDir)
}

func (c *Cluster) chown(path string) error {
	if c.uid < 0 {
		return nil
	}
	if err := os.Chown(path, c.uid, c.gid); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// writeFile writes a file of the data directory, owned by the server user.
func (c *Cluster) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.chown(path)
}

// baseConf are the postgresql.conf settings of every node. The port and
// cluster_name are given on the postgres command line instead, so that
// configuration files copied between nodes (pg_basebackup, pg_rewind)
// cannot change them.
var baseConf = []string{
	"listen_addresses = '127.0.0.1'",
	"unix_socket_directories = ''",
	"fsync = off",
	"synchronous_commit = on",
	"full_page_writes = on",
	"wal_log_hints = on",
	"wal_level = replica",
	"max_wal_senders = 10",
	"max_replication_slots = 10",
	"wal_keep_size = '256MB'",
	"hot_standby = on",
	"hot_standby_feedback = on",
	"wal_retrieve_retry_interval = '200ms'",
	"wal_receiver_status_interval = '1s'",
	"max_connections = 200",
	"shared_buffers = '32MB'",
	"logging_collector = off",
	"log_min_messages = warning",
	// Dynamic shared memory in files under the data directory (pg_dynshmem),
	// not /dev/shm/PostgreSQL.*: an immediate shutdown or a crash leaves
	// the segments behind, and only a restart on the same data directory
	// would remove them.
	"dynamic_shared_memory_type = mmap",
}

// DefaultHBA is the pg_hba.conf of every node: trust for local and
// 127.0.0.1 connections, normal and replication.
var DefaultHBA = []string{
	"local   all          all                 trust",
	"local   replication  all                 trust",
	"host    all          all    127.0.0.1/32 trust",
	"host    replication  all    127.0.0.1/32 trust",
}

func (c *Cluster) initPrimary(ctx context.Context, n *Node) error {
	args := []string{"-D", n.DataDir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"}
	if help, err := exec.Command(filepath.Join(c.bin, "initdb"), "--help").Output(); err == nil && strings.Contains(string(help), "--no-instructions") {
		args = append(args, "--no-instructions")
	}
	if _, err := c.runTool(ctx, "initdb", args...); err != nil {
		return err
	}
	conf := "\n# pgcluster\n" + strings.Join(baseConf, "\n") + "\n"
	if len(c.opts.ExtraConf) > 0 {
		conf += "# pgcluster: Options.ExtraConf\n" + strings.Join(c.opts.ExtraConf, "\n") + "\n"
	}
	f, err := os.OpenFile(filepath.Join(n.DataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.writeFile(filepath.Join(n.DataDir, "pg_hba.conf"), hbaContent(nil)); err != nil {
		return err
	}
	if err := c.startProcess(ctx, n); err != nil {
		return err
	}
	return c.waitReady(ctx, n, -1)
}

func hbaContent(lines []string) string {
	if lines == nil {
		lines = DefaultHBA
	}
	return "# written by pgcluster\n" + strings.Join(lines, "\n") + "\n"
}

// cloneStandby makes node i a fresh copy of node primary (pg_basebackup),
// configured as its standby, starts it and waits until it streams.
func (c *Cluster) cloneStandby(ctx context.Context, i, primary int) error {
	n, p := c.nodes[i], c.nodes[primary]
	if err := c.reapNode(ctx, n); err != nil {
		return err
	}
	if err := c.mkDataDir(n); err != nil {
		return err
	}
	if _, err := c.runTool(ctx, "pg_basebackup", "-D", n.DataDir, "-h", p.Host, "-p", strconv.Itoa(p.Port),
		"-U", "postgres", "-X", "stream", "-R", "-c", "fast", "--no-sync"); err != nil {
		return fmt.Errorf("pgcluster: clone %s from %s: %w", n.Name, p.Name, err)
	}
	if err := c.configureStandby(n, p); err != nil {
		return err
	}
	since := n.logSize()
	if err := c.startProcess(ctx, n); err != nil {
		return err
	}
	if err := c.waitReady(ctx, n, since); err != nil {
		return err
	}
	return c.waitStreaming(ctx, i, primary, since)
}

// conninfo is the primary_conninfo of a standby n of p.
func conninfo(n, p *Node) string {
	return fmt.Sprintf("host=%s port=%d user=postgres application_name=%s", p.Host, p.Port, n.Name)
}

// configureStandby writes standby.signal and sets primary_conninfo in
// postgresql.auto.conf, dropping ALTER SYSTEM settings that belong to
// another node's role (primary_conninfo, primary_slot_name,
// synchronous_standby_names) which pg_basebackup and pg_rewind copy from
// the source.
func (c *Cluster) configureStandby(n, p *Node) error {
	path := filepath.Join(n.DataDir, "postgresql.auto.conf")
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("pgcluster: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(old), "\n") {
		key, _, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch strings.TrimSpace(key) {
		case "primary_conninfo", "primary_slot_name", "synchronous_standby_names":
			continue
		}
		if line != "" {
			out = append(out, line)
		}
	}
	out = append(out, "primary_conninfo = '"+conninfo(n, p)+"'")
	if err := c.writeFile(path, strings.Join(out, "\n")+"\n"); err != nil {
		return err
	}
	return c.writeFile(filepath.Join(n.DataDir, "standby.signal"), "")
}

// Close stops every node and removes the cluster's directory. It resumes
// hung nodes, asks each postmaster for an immediate shutdown (SIGQUIT),
// kills the process group after a short grace, waits for every process of
// the cluster to exit, and kills running tools (pg_basebackup, pg_rewind).
// Close is idempotent: later calls return the first call's result.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.closeDone
		return c.closeErr
	}
	c.closed = true
	c.closeDone = make(chan struct{})
	for pgid := range c.toolPGIDs {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	type target struct {
		n    *Node
		p    *proc
		pgid int
	}
	var ts []target
	for _, n := range c.nodes {
		ts = append(ts, target{n, n.proc, n.pgid})
		n.hung = false
	}
	c.mu.Unlock()
	c.tools.Wait()

	errs := make([]error, len(ts))
	var wg sync.WaitGroup
	for k, t := range ts {
		wg.Go(func() {
			if t.pgid == 0 {
				return
			}
			if t.p != nil && !t.p.Exited() {
				resumeTree(t.pgid, childproc.ChildrenOf(t.p.PID)) // a hung node's children too
			} else {
				_ = syscall.Kill(-t.pgid, syscall.SIGCONT)
			}
			if t.p != nil && !t.p.Exited() {
				_ = syscall.Kill(t.p.PID, syscall.SIGQUIT)
				if !t.p.Wait(context.Background(), 3*time.Second) {
					c.logf("pgcluster: %s did not stop on SIGQUIT; killing it", t.n.Name)
					_ = syscall.Kill(-t.pgid, syscall.SIGKILL)
					if !t.p.Wait(context.Background(), 10*time.Second) {
						errs[k] = fmt.Errorf("pgcluster: %s (pid %d) does not exit", t.n.Name, t.p.PID)
						return
					}
				}
			}
			errs[k] = reapGroup(context.Background(), t.pgid, time.Second)
			removeShm(t.n.DataDir)
		})
	}
	wg.Wait()
	err := errors.Join(errs...)
	if c.base != "" {
		if rerr := os.RemoveAll(c.base); rerr != nil {
			err = errors.Join(err, fmt.Errorf("pgcluster: %w", rerr))
		}
	}
	c.closeErr = err
	close(c.closeDone)
	return err
}

// Len returns the number of nodes.
func (c *Cluster) Len() int { return len(c.nodes) }

// Node returns node i, or nil if i is out of range.
func (c *Cluster) Node(i int) *Node {
	if i < 0 || i >= len(c.nodes) {
		return nil
	}
	return c.nodes[i]
}

// BaseDir returns the temporary directory holding the data directories and
// logs; Close removes it.
func (c *Cluster) BaseDir() string { return c.base }

// DSN returns a multi-host URL over all nodes in index order, as user
// postgres to database postgres without TLS, with params ("key=value")
// appended to the query:
//
//	postgres://postgres@127.0.0.1:p0,127.0.0.1:p1,.../postgres?sslmode=disable&<params>
func (c *Cluster) DSN(params ...string) string {
	order := make([]int, len(c.nodes))
	for i := range order {
		order[i] = i
	}
	return c.DSNOrder(order, params...)
}

// DSNOrder is DSN with the hosts in the given order of node indexes.
func (c *Cluster) DSNOrder(order []int, params ...string) string {
	hosts := make([]string, 0, len(order))
	for _, i := range order {
		if n := c.Node(i); n != nil {
			hosts = append(hosts, n.Addr())
		}
	}
	return URL(hosts, params...)
}

// URL returns the URL of the servers at addrs ("host:port"), in that
// order, as user postgres to database postgres without TLS, with params
// ("key=value", "" for none) appended to the query: the one form of the
// DSNs of pgcluster's and patroni's clusters and nodes.
func URL(addrs []string, params ...string) string {
	dsn := "postgres://postgres@" + strings.Join(addrs, ",") + "/postgres?sslmode=disable"
	for _, p := range params {
		if p != "" {
			dsn += "&" + p
		}
	}
	return dsn
}

// PID returns the pid of node i's running postmaster, or 0 if it is not
// running.
func (c *Cluster) PID(i int) int {
	n := c.Node(i)
	if n == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n.proc == nil || n.proc.Exited() {
		return 0
	}
	return n.proc.PID
}

// Running reports whether node i's postmaster is running (hung or not).
func (c *Cluster) Running(i int) bool { return c.PID(i) != 0 }

// Hung reports whether node i is stopped by Hang.
func (c *Cluster) Hung(i int) bool {
	n := c.Node(i)
	if n == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return n.hung && n.proc != nil && !n.proc.Exited()
}

// LogTail returns the last lines of node i's server log.
func (c *Cluster) LogTail(i int, lines int) string {
	n := c.Node(i)
	if n == nil {
		return ""
	}
	return n.logTail(lines)
}

func (c *Cluster) node(i int) (*Node, error) {
	n := c.Node(i)
	if n == nil {
		return nil, fmt.Errorf("pgcluster: no node %d (cluster has %d)", i, len(c.nodes))
	}
	return n, nil
}
