// Package netns builds a small test network out of Linux network
// namespaces, for tests whose faults must cross a real network stack: a
// host cut off with no RST, a slow and lossy link, a partition.
//
// # Layout
//
// [New] makes, for a set of hosts ("etcd", "node0", ...), one network
// namespace each and a hub namespace holding a bridge. Each host has one
// address, 198.18.N.10+i (198.18.0.0/15 is reserved for benchmarking
// networks, RFC 2544; N is picked free on this machine), on a veth pair to
// the bridge: host to host traffic (replication, Patroni to etcd) is the
// kernel's. The test process, the client, stays in the root namespace with
// the address 198.18.N.1, and reaches each host over a point-to-point link
// of its own: a pair of TUN devices whose packets this process copies,
// one goroutine per direction. That copy is where [Link.Set] applies
// faults: drop everything (a cut with no RST: TCP just retransmits), a
// delay, a loss rate. The kernels these tests run on here lack sch_netem
// (and prio, gact), so tc netem cannot do it; the copy does what netem
// would, for the client's traffic only.
//
// [Net.Isolate] takes a host off the bridge (its veth's hub end down): it
// loses every other host and keeps its link to the client.
//
// # Cleanup
//
// Every namespace is named "uft<pid>-<host>" (pid: the test process) and
// deleted by [Net.Close], which kills what still runs in it first.
// Deleting a namespace deletes its veth ends; the TUN devices in the root
// namespace vanish when this process closes them or dies. So a crashed
// test leaves only named namespaces, and [New] deletes those whose process
// is gone (killing what runs in them) before it makes its own. Root
// namespace routes exist only through the TUN devices: none outlives the
// process.
//
// # Requirements
//
// Root (CAP_NET_ADMIN and CAP_SYS_ADMIN), /dev/net/tun and iproute2's ip
// ([Available] says what is missing).
package netns

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/unifiedsql/unified/internal/childproc"
)

// Prefix starts the name of every namespace this package makes.
const Prefix = "uft"

// netnsDir is where ip keeps named namespaces.
const netnsDir = "/var/run/netns"

// Available returns nil when namespaces can be made here, or an error
// naming what is missing: root, iproute2's ip, /dev/net/tun.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("netns: network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("netns: ip not found on $PATH: install iproute2")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("netns: no /dev/net/tun: %w", err)
	}
	return nil
}

// Net is a test network. Its methods are safe for concurrent use.
type Net struct {
	id     string // Prefix + pid
	hub    string // the hub namespace
	subnet string // "198.18.N."
	client netip.Addr
	hosts  []*Host
	logf   func(string, ...any)

	mu     sync.Mutex // protects closed
	closed bool
}

// Host is one namespace of a Net.
type Host struct {
	Name string     // as given to New
	NS   string     // the namespace's name, for "ip netns exec"
	Addr netip.Addr // its address, on the bridge and on its link
	Link *Link      // its link to the root namespace
	port string     // its veth's end on the bridge, in the hub namespace
}

// Exec returns the command prefix that runs a program in h's namespace:
// "ip netns exec NS".
func (h *Host) Exec() []string { return []string{ipPath(), "netns", "exec", h.NS} }

func ipPath() string {
	if p, err := exec.LookPath("ip"); err == nil {
		return p
	}
	return "ip"
}

// ip runs ip with args, returning its output in the error.
func ip(args ...string) error {
	out, err := exec.Command(ipPath(), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// New makes the hub, one namespace per host name and every link, after
// deleting the namespaces left by dead processes. logf (nil: none) gets
// what it does. On error everything made is removed.
func New(names []string, logf func(string, ...any)) (_ *Net, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	Sweep(logf)
	if len(names) > 80 {
		return nil, errors.New("netns: too many hosts")
	}
	id := Prefix + strconv.Itoa(os.Getpid())
	n := &Net{id: id, hub: id + "-hub", logf: logf}
	if n.subnet, err = freeSubnet(); err != nil {
		return nil, err
	}
	n.client = netip.MustParseAddr(n.subnet + "1")
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if err := ip("netns", "add", n.hub); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"-n", n.hub, "link", "set", "lo", "up"},
		{"-n", n.hub, "link", "add", "br0", "type", "bridge"},
		{"-n", n.hub, "link", "set", "br0", "up"},
	} {
		if err := ip(args...); err != nil {
			return nil, err
		}
	}
	for i, name := range names {
		h := &Host{Name: name, NS: id + "-" + name, Addr: netip.MustParseAddr(n.subnet + strconv.Itoa(10+i)), port: "p" + strconv.Itoa(i)}
		n.hosts = append(n.hosts, h)
		if err := n.addHost(h, i); err != nil {
			return nil, err
		}
	}
	logf("netns: %d hosts on %s0/24 (client %s), namespaces %s-*", len(names), n.subnet, n.client, id)
	return n, nil
}

func (n *Net) addHost(h *Host, i int) error {
	if err := ip("netns", "add", h.NS); err != nil {
		return err
	}
	tunRoot, tunHost := fmt.Sprintf("%sa%d", n.id, i), fmt.Sprintf("%sb%d", n.id, i)
	for _, args := range [][]string{
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", h.NS, "link", "add", "eth0", "type", "veth", "peer", "name", h.port, "netns", n.hub},
		{"-n", n.hub, "link", "set", h.port, "master", "br0"},
		{"-n", n.hub, "link", "set", h.port, "up"},
		{"-n", h.NS, "addr", "add", h.Addr.String() + "/24", "dev", "eth0"},
		{"-n", h.NS, "link", "set", "eth0", "up"},
	} {
		if err := ip(args...); err != nil {
			return err
		}
	}
	l, err := newLink(tunRoot, tunHost)
	if err != nil {
		return err
	}
	h.Link = l
	for _, args := range [][]string{
		{"link", "set", tunHost, "netns", h.NS},
		{"-n", h.NS, "link", "set", tunHost, "up"},
		{"-n", h.NS, "route", "add", n.client.String() + "/32", "dev", tunHost, "src", h.Addr.String()},
		{"addr", "add", n.client.String() + "/32", "dev", tunRoot},
		{"link", "set", tunRoot, "up"},
		{"route", "add", h.Addr.String() + "/32", "dev", tunRoot, "src", n.client.String()},
	} {
		if err := ip(args...); err != nil {
			return err
		}
	}
	l.start()
	return nil
}

// freeSubnet returns "198.18.N." for an N no address or route of the root
// namespace uses.
func freeSubnet() (string, error) {
	out, err := exec.Command(ipPath(), "-4", "-o", "addr").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("netns: ip addr: %v: %s", err, out)
	}
	routes, err := exec.Command(ipPath(), "-4", "route", "show", "table", "all").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("netns: ip route: %v: %s", err, routes)
	}
	used := string(out) + string(routes)
	start := os.Getpid() % 200
	for k := range 200 {
		s := "198.18." + strconv.Itoa(1+(start+k)%200) + "."
		if !strings.Contains(used, s) {
			return s, nil
		}
	}
	return "", errors.New("netns: no free subnet in 198.18.0.0/16")
}

// Client returns the root namespace's address, the source of every
// connection the test process makes to a host.
func (n *Net) Client() netip.Addr { return n.client }

// Hosts returns the hosts in the order given to New.
func (n *Net) Hosts() []*Host { return n.hosts }

// Host returns the host named name, or nil.
func (n *Net) Host(name string) *Host {
	for _, h := range n.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// CIDR returns the network's /24, for pg_hba.conf.
func (n *Net) CIDR() string { return n.subnet + "0/24" }

// Isolate takes host h off the bridge (the hub's end of its veth goes
// down): it can no longer reach any other host nor they it, in either
// direction, and nothing tells either side; its link to the client stays.
// Rejoin undoes it.
func (n *Net) Isolate(h *Host) error { return ip("-n", n.hub, "link", "set", h.port, "down") }

// Rejoin puts host h back on the bridge after Isolate.
func (n *Net) Rejoin(h *Host) error { return ip("-n", n.hub, "link", "set", h.port, "up") }

// Close stops every link and deletes every namespace of the network,
// after killing the processes still running in them. It is idempotent.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	var errs []error
	for _, h := range n.hosts {
		if h.Link != nil {
			h.Link.close()
		}
		if err := deleteNS(h.NS); err != nil {
			errs = append(errs, err)
		}
	}
	if err := deleteNS(n.hub); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteNS kills what runs in namespace name and deletes it; a namespace
// that does not exist is not an error.
func deleteNS(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); err != nil {
		return nil
	}
	childproc.KillUntilGone(func() []int { return PIDs(name) }, 5*time.Second, 20*time.Millisecond)
	return ip("netns", "delete", name)
}

// PIDs lists the processes running in namespace name ("ip netns pids").
func PIDs(name string) []int {
	out, err := exec.Command(ipPath(), "netns", "pids", name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Sweep deletes the namespaces named Prefix+pid+"-..." whose process pid
// is gone, killing what still runs in them: what a crashed test left.
func Sweep(logf func(string, ...any)) {
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, Prefix)
		if !ok {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		if logf != nil {
			logf("netns: deleting %s, left by dead process %d", name, pid)
		}
		_ = deleteNS(name)
	}
}

// Own lists this process's namespaces still present (for tests that check
// Close).
func Own() []string {
	ents, _ := os.ReadDir(netnsDir)
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), Prefix+strconv.Itoa(os.Getpid())+"-") {
			names = append(names, e.Name())
		}
	}
	return names
}

// Impairment is what a link does to the packets of one direction. The
// zero value passes them untouched.
type Impairment struct {
	Drop  bool          // drop every packet: a cut, no RST, no ICMP
	Delay time.Duration // hold each packet this long (order kept)
	Loss  float64       // drop this fraction of packets at random (0..1)
}

// Link is a host's point-to-point link to the root namespace: two TUN
// devices and this process copying packets between them.
type Link struct {
	root, host *os.File
	up, down   *direction // root->host, host->root
	wg         sync.WaitGroup
	cancel     context.CancelFunc
	ctx        context.Context
}

type direction struct {
	mu  sync.Mutex // protects imp
	imp Impairment
	out *os.File
	q   chan packet
}

type packet struct {
	b   []byte
	due time.Time
}

func newLink(rootName, hostName string) (*Link, error) {
	root, err := openTUN(rootName)
	if err != nil {
		return nil, err
	}
	host, err := openTUN(hostName)
	if err != nil {
		root.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Link{
		root: root, host: host, ctx: ctx, cancel: cancel,
		up:   &direction{out: host, q: make(chan packet, 8192)},
		down: &direction{out: root, q: make(chan packet, 8192)},
	}, nil
}

func (l *Link) start() {
	for _, p := range []struct {
		in *os.File
		d  *direction
	}{{l.root, l.up}, {l.host, l.down}} {
		l.wg.Go(func() { l.read(p.in, p.d) })
		l.wg.Go(func() { l.write(p.d) })
	}
}

// Set applies imp to both directions; SetEach sets them apart.
func (l *Link) Set(imp Impairment) { l.SetEach(imp, imp) }

// SetEach applies toHost to the packets from the root namespace to the
// host and toRoot to those coming back.
func (l *Link) SetEach(toHost, toRoot Impairment) {
	l.up.set(toHost)
	l.down.set(toRoot)
}

// Heal removes every impairment.
func (l *Link) Heal() { l.Set(Impairment{}) }

func (d *direction) set(imp Impairment) {
	d.mu.Lock()
	d.imp = imp
	d.mu.Unlock()
}

func (d *direction) get() Impairment {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.imp
}

func (l *Link) read(in *os.File, d *direction) {
	buf := make([]byte, 65536)
	for {
		k, err := in.Read(buf)
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		imp := d.get()
		if imp.Drop || (imp.Loss > 0 && rand.Float64() < imp.Loss) {
			continue
		}
		p := packet{b: append([]byte(nil), buf[:k]...), due: time.Now().Add(imp.Delay)}
		select {
		case d.q <- p:
		default: // a full queue drops, as a router's would
		}
	}
}

func (l *Link) write(d *direction) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		var p packet
		select {
		case p = <-d.q:
		case <-l.ctx.Done():
			return
		}
		if wait := time.Until(p.due); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-l.ctx.Done():
				return
			}
		}
		_, _ = d.out.Write(p.b)
	}
}

func (l *Link) close() {
	l.cancel()
	l.root.Close()
	l.host.Close()
	l.wg.Wait()
}
