package patroni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/unifiedsql/unified/internal/childproc"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// DCS selects Patroni's etcd client. The zero value means EtcdV2.
type DCS int

const (
	// EtcdV2 is Patroni's "etcd:" client (etcd's v2 API, served by etcd
	// 3.4 with --enable-v2=true). It renews the leader key with a
	// compare-and-swap on its own name, so a node that lost the key
	// cannot take it back. The default, and the one that loses no
	// acknowledged write (see the package documentation).
	EtcdV2 DCS = iota + 1
	// EtcdV3 is Patroni's "etcd3:" client. In Patroni 3.0.2 a frozen
	// leader that wakes up after its lease expired writes the leader key
	// unconditionally and demotes the new primary (patroni#2689, fixed in
	// 3.0.3). Kept to show that loss.
	EtcdV3
)

// String returns "etcd" (v2) or "etcd3", the name of Patroni's
// configuration section.
func (d DCS) String() string {
	switch d {
	case EtcdV2, 0:
		return "etcd"
	case EtcdV3:
		return "etcd3"
	}
	return "DCS(" + strconv.Itoa(int(d)) + ")"
}

// Options configure Start. The zero value is a usable asynchronous cluster
// with Patroni's test-friendly timings.
type Options struct {
	// Synchronous sets Patroni's synchronous_mode: true: the leader keeps
	// one replica as a synchronous standby and only that one may be
	// promoted.
	Synchronous bool
	// TTL is the leader key's time to live: a crashed leader is replaced
	// about TTL after it died. Default (0) 20 s. Patroni takes whole
	// seconds; durations are rounded up. Patroni 3.0.2 accepts less, later
	// versions enforce 20 s as the minimum.
	TTL time.Duration
	// LoopWait is the pause between Patroni's HA loops. Default 1 s (the
	// minimum later versions enforce).
	LoopWait time.Duration
	// RetryTimeout bounds Patroni's retries of DCS and PostgreSQL
	// operations. Default 3 s (the minimum later versions enforce).
	RetryTimeout time.Duration
	// DCS is Patroni's etcd client. Default EtcdV2.
	DCS DCS
	// Logf receives progress and diagnostics. Default: discard.
	Logf func(format string, args ...any)
	// TempDir is where the cluster's directory is created. Default: the
	// same as pgcluster's, /dev/shm when it is a roomy tmpfs, else
	// os.TempDir().
	TempDir string
	// BinDir holds the PostgreSQL server binaries. Default:
	// pgcluster.FindBinDir().
	BinDir string
	// Network, when not nil, puts etcd and the nodes on addresses of
	// their own, each started through a prefix such as "ip netns exec
	// NAME" (see Network). Default: everything on 127.0.0.1.
	Network *Network
}

// Cluster is a running etcd and three Patroni nodes, each managing its
// PostgreSQL. Create it with Start and always Close it. Its methods are
// safe for concurrent use, but faulting one node from two goroutines at
// once gives whatever order the signals arrive in.
type Cluster struct {
	opts     Options
	patroni  string // patroni executable
	etcdBin  string
	unshare  []string // the unshare command line prefix; nil: no PID namespace
	base     string
	cred     *syscall.Credential
	uid, gid int
	etcdPort int
	etcdPeer int
	nodes    []*Node
	logf     func(format string, args ...any)
	http     *http.Client

	mu        sync.Mutex // protects following fields and the nodes' proc and hung
	closed    bool
	closeDone chan struct{}
	closeErr  error
	etcd      *proc
}

// Node is one machine of the cluster: a Patroni and the PostgreSQL it
// manages. Its exported fields do not change; do not modify them.
type Node struct {
	Index    int    // 0, 1 or 2
	Name     string // "node0"...: Patroni member name and application_name
	Host     string // 127.0.0.1, or its address in Options.Network
	Port     int    // PostgreSQL's TCP port
	RESTPort int    // Patroni's REST API port
	DataDir  string // PostgreSQL data directory, managed by Patroni

	home       string // the node's directory, owned by the server user
	configPath string
	logPath    string
	proc       *proc // the node's process tree: unshare, Patroni, PostgreSQL
	hung       bool
}

// Addr returns PostgreSQL's "host:port".
func (n *Node) Addr() string { return net.JoinHostPort(n.Host, strconv.Itoa(n.Port)) }

// DSN returns a URL connecting to this node's PostgreSQL only, as user
// postgres (trust, no password) to database postgres, without TLS.
func (n *Node) DSN() string { return pgcluster.URL([]string{n.Addr()}) }

// RESTURL returns the base URL of the node's Patroni REST API,
// "http://127.0.0.1:port".
func (n *Node) RESTURL() string {
	return "http://" + net.JoinHostPort(n.Host, strconv.Itoa(n.RESTPort))
}

// LogPath returns the node's log: Patroni's output and, after it, that of
// the PostgreSQL servers it started.
func (n *Node) LogPath() string { return n.logPath }

const nodeCount = 3

// Binaries locates patroni and etcd (on $PATH) and the PostgreSQL server
// binaries (pgcluster.FindBinDir). The error names what to install.
func Binaries() (patroniBin, etcdBin, pgBinDir string, err error) {
	if patroniBin, etcdBin, err = patroniTools(); err != nil {
		return "", "", "", err
	}
	if pgBinDir, err = pgcluster.FindBinDir(); err != nil {
		return "", "", "", fmt.Errorf("patroni: %w", err)
	}
	return patroniBin, etcdBin, pgBinDir, nil
}

func patroniTools() (patroniBin, etcdBin string, err error) {
	var missing []string
	if patroniBin, err = exec.LookPath("patroni"); err != nil {
		missing = append(missing, "patroni")
	}
	if etcdBin, err = exec.LookPath("etcd"); err != nil {
		missing = append(missing, "etcd")
	}
	if len(missing) > 0 {
		return "", "", fmt.Errorf("patroni: %s not found on $PATH: install them (\"apt-get install patroni etcd-server etcd-client\" on Debian/Ubuntu: Patroni 3.0.2 with python3-psycopg2 and python3-etcd, etcd 3.4)",
			strings.Join(missing, " and "))
	}
	return patroniBin, etcdBin, nil
}

// Start starts etcd, then node 0's Patroni, which bootstraps PostgreSQL
// with initdb and becomes the leader, then nodes 1 and 2, which clone it
// with pg_basebackup and stream from it. It returns when the cluster is
// healthy (see WaitHealthy). ctx bounds the whole start; without a
// deadline it is 3 minutes. On failure everything started is stopped and
// removed, and the error carries the tail of the failing node's log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.DCS == 0 {
		opts.DCS = EtcdV2
	}
	if opts.DCS != EtcdV2 && opts.DCS != EtcdV3 {
		return nil, fmt.Errorf("patroni: unknown DCS %d", opts.DCS)
	}
	patroniBin, etcdBin, err := patroniTools()
	if err != nil {
		return nil, err
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = pgcluster.FindBinDir(); err != nil {
			return nil, fmt.Errorf("patroni: %w", err)
		}
	}
	if opts.TempDir == "" {
		opts.TempDir = pgcluster.DefaultTempDir()
	}
	cred, uid, gid, err := pgcluster.ServerUser()
	if err != nil {
		return nil, fmt.Errorf("patroni: %w", err)
	}
	t0 := time.Now()
	c := &Cluster{
		opts: opts, patroni: patroniBin, etcdBin: etcdBin, cred: cred, uid: uid, gid: gid,
		logf: opts.Logf,
		http: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
	}
	c.unshare = c.findUnshare()
	if c.unshare == nil {
		c.logf("patroni: no PID namespace (unshare unavailable): a killed test may leave PostgreSQL running until the next Start sweeps it")
	}

	base, err := os.MkdirTemp(opts.TempDir, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("patroni: %w", err)
	}
	c.base = base
	if err := pgcluster.MarkOwner(base); err != nil {
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
		return nil, fmt.Errorf("patroni: %w", err)
	}
	if cred != nil {
		if err := pgcluster.Searchable(filepath.Dir(base)); err != nil {
			return nil, fmt.Errorf("patroni: %w", err)
		}
	}
	ports, err := pgcluster.FreePorts(2*nodeCount + 2)
	if err != nil {
		return nil, fmt.Errorf("patroni: %w", err)
	}
	c.etcdPort, c.etcdPeer = ports[2*nodeCount], ports[2*nodeCount+1]
	for i := range nodeCount {
		name := "node" + strconv.Itoa(i)
		home := filepath.Join(base, name)
		n := &Node{Index: i, Name: name, Host: c.nodeHost(i), Port: ports[i], RESTPort: ports[nodeCount+i],
			DataDir: filepath.Join(home, "data"), home: home,
			configPath: filepath.Join(base, name+".yml"), logPath: filepath.Join(base, name+".log")}
		c.nodes = append(c.nodes, n)
		if err := c.mkdirOwned(home); err != nil {
			return nil, err
		}
		if err := c.mkdirOwned(n.DataDir); err != nil {
			return nil, err
		}
		cfg, err := nodeConfig(nodeLayout{
			name: name, host: n.Host, etcdHost: c.etcdHost(), trust: c.trustCIDR(),
			pgPort: n.Port, restPort: n.RESTPort, home: home, dataDir: n.DataDir,
			binDir: opts.BinDir, etcdPort: c.etcdPort, dcs: opts.DCS, synchro: opts.Synchronous,
			ttl: seconds(opts.TTL, 20), loopWait: seconds(opts.LoopWait, 1), retryTime: seconds(opts.RetryTimeout, 3),
		})
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(n.configPath, cfg, 0o644); err != nil {
			return nil, fmt.Errorf("patroni: %w", err)
		}
	}
	if err := c.startEtcd(ctx); err != nil {
		return nil, err
	}
	c.logf("patroni: etcd ready on port %d (%s client) after %v", c.etcdPort, opts.DCS, time.Since(t0).Round(time.Millisecond))
	if err := c.startNode(c.nodes[0]); err != nil {
		return nil, err
	}
	if err := c.waitBootstrap(ctx, c.nodes[0]); err != nil {
		return nil, err
	}
	c.logf("patroni: %s bootstrapped and leads after %v", c.nodes[0].Name, time.Since(t0).Round(time.Millisecond))
	for _, n := range c.nodes[1:] {
		if err := c.startNode(n); err != nil {
			return nil, err
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		return nil, err
	}
	c.logf("patroni: cluster healthy after %v (dir %s)", time.Since(t0).Round(time.Millisecond), base)
	ok = true
	return c, nil
}

// waitBootstrap waits until n's PostgreSQL accepts writes and its Patroni
// holds the leader key.
func (c *Cluster) waitBootstrap(ctx context.Context, n *Node) error {
	var last error
	for {
		if err := c.nodeExited(n); err != nil {
			return err
		}
		rec, err := c.inRecovery(ctx, n)
		if err == nil && !rec {
			if code, _, herr := c.restGet(ctx, n, "/primary"); herr == nil && code == http.StatusOK {
				return nil
			} else if herr != nil {
				err = herr
			} else {
				err = fmt.Errorf("GET /primary: %d", code)
			}
		} else if err == nil {
			err = errors.New("in recovery")
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("patroni: %s did not bootstrap (%v): %w; log:\n%s", n.Name, last, ctx.Err(), c.LogTail(n.Index, 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) mkdirOwned(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("patroni: %w", err)
	}
	if c.uid >= 0 {
		if err := os.Chown(dir, c.uid, c.gid); err != nil {
			return fmt.Errorf("patroni: %w", err)
		}
	}
	return nil
}

// Close stops etcd and every node and removes the cluster's directory.
// Each node's processes (Patroni, PostgreSQL and its backends, a running
// pg_rewind or pg_basebackup) are resumed if hung and killed with SIGKILL:
// the directory is deleted anyway, so nothing is shut down cleanly. Close
// returns when none of them is left, or an error naming those that are.
// It is idempotent: later calls return the first call's result.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.closeDone
		return c.closeErr
	}
	c.closed = true
	c.closeDone = make(chan struct{})
	c.mu.Unlock()

	errs := make([]error, len(c.nodes)+1)
	var wg sync.WaitGroup
	for k, n := range c.nodes {
		wg.Go(func() { errs[k] = c.kill(n) })
	}
	wg.Wait()
	c.mu.Lock()
	etcd := c.etcd
	c.mu.Unlock()
	if etcd != nil {
		errs[len(c.nodes)] = killTree(etcd, nil)
	}
	err := errors.Join(errs...)
	if c.base != "" {
		if rerr := os.RemoveAll(c.base); rerr != nil {
			err = errors.Join(err, fmt.Errorf("patroni: %w", rerr))
		}
	}
	c.closeErr = err
	close(c.closeDone)
	return err
}

// Len returns the number of nodes, 3.
func (c *Cluster) Len() int { return len(c.nodes) }

// Node returns node i, or nil if i is out of range.
func (c *Cluster) Node(i int) *Node {
	if i < 0 || i >= len(c.nodes) {
		return nil
	}
	return c.nodes[i]
}

func (c *Cluster) node(i int) (*Node, error) {
	n := c.Node(i)
	if n == nil {
		return nil, fmt.Errorf("patroni: no node %d (cluster has %d)", i, len(c.nodes))
	}
	return n, nil
}

// DSN returns a multi-host URL over the three nodes' PostgreSQL in index
// order, as user postgres to database postgres without TLS, with params
// ("key=value") appended:
//
//	postgres://postgres@127.0.0.1:p0,127.0.0.1:p1,127.0.0.1:p2/postgres?sslmode=disable&<params>
func (c *Cluster) DSN(params ...string) string {
	hosts := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		hosts[i] = n.Addr()
	}
	return pgcluster.URL(hosts, params...)
}

// RESTURLs returns the base URLs of the three Patroni REST APIs in index
// order (the value for unified_patroni, comma-joined).
func (c *Cluster) RESTURLs() []string {
	urls := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		urls[i] = n.RESTURL()
	}
	return urls
}

// EtcdURL returns etcd's client URL, "http://127.0.0.1:port" (or etcd's
// address in Options.Network).
func (c *Cluster) EtcdURL() string {
	return "http://" + net.JoinHostPort(c.etcdHost(), strconv.Itoa(c.etcdPort))
}

// BaseDir returns the cluster's directory (nodes' directories, their
// configuration and logs, etcd's data); Close removes it.
func (c *Cluster) BaseDir() string { return c.base }

// Running reports whether node i's processes run (hung or not): false
// after Crash until StartNode.
func (c *Cluster) Running(i int) bool {
	n := c.Node(i)
	if n == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return n.proc != nil && !n.proc.Exited()
}

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

// LogTail returns the last lines of node i's log.
func (c *Cluster) LogTail(i, lines int) string {
	n := c.Node(i)
	if n == nil {
		return ""
	}
	return childproc.FileTail(n.logPath, lines)
}
