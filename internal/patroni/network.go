package patroni

import (
	"slices"
	"strconv"
)

// Network places etcd and each node on an address of its own, and starts
// each one's processes through a command prefix, typically "ip netns exec
// NAME" to run it in a network namespace (internal/netns makes those).
// Everything else is as without it: the same ports, directories and
// users. The test process must reach every address (the cluster's own
// questions to the nodes and etcd come from it), and the nodes must reach
// each other and etcd.
type Network struct {
	// EtcdHost is etcd's address; EtcdExec the prefix that starts it.
	EtcdHost string
	EtcdExec []string
	// NodeHosts[i] is node i's address (PostgreSQL and the REST API
	// listen there and on nothing else); NodeExec[i] the prefix that
	// starts its Patroni. Both have one entry per node.
	NodeHosts []string
	NodeExec  [][]string
	// Trust is the network (CIDR) from which pg_hba.conf trusts every
	// connection, normal and replication, besides 127.0.0.1 and the
	// socket.
	Trust string
}

func (c *Cluster) nodeHost(i int) string {
	if nw := c.opts.Network; nw != nil && i < len(nw.NodeHosts) {
		return nw.NodeHosts[i]
	}
	return "127.0.0.1"
}

func (c *Cluster) etcdHost() string {
	if nw := c.opts.Network; nw != nil && nw.EtcdHost != "" {
		return nw.EtcdHost
	}
	return "127.0.0.1"
}

// trustCIDR is the extra network pg_hba trusts, "" for none.
func (c *Cluster) trustCIDR() string {
	if nw := c.opts.Network; nw != nil {
		return nw.Trust
	}
	return ""
}

// wrapEtcd returns etcd's command line, in its namespace when the Network
// says so, and whether it still has to be given the server user's
// credentials: a prefix such as ip netns exec needs root, so the change
// of user comes after it, through setpriv (which also sets the
// parent-death signal again, cleared by the change of user).
func (c *Cluster) wrapEtcd(args []string) (cmd []string, needCred bool) {
	nw := c.opts.Network
	if nw == nil || len(nw.EtcdExec) == 0 {
		return args, true
	}
	return append(append(slices.Clone(nw.EtcdExec), c.setpriv()...), args...), false
}

// wrapNode prefixes node i's command line (already in its PID namespace
// or not) with its Network prefix. needCred as for wrapEtcd.
func (c *Cluster) wrapNode(i int, args []string, needCred bool) ([]string, bool) {
	nw := c.opts.Network
	if nw == nil || i >= len(nw.NodeExec) || len(nw.NodeExec[i]) == 0 {
		return args, needCred
	}
	pre := slices.Clone(nw.NodeExec[i])
	if needCred {
		pre = append(pre, c.setpriv()...)
	}
	return append(pre, args...), false
}

// setpriv is the prefix that becomes the server user (nothing when the
// test does not run as root).
func (c *Cluster) setpriv() []string {
	if c.cred == nil {
		return nil
	}
	return []string{"setpriv", "--reuid=" + strconv.Itoa(c.uid), "--regid=" + strconv.Itoa(c.gid), "--init-groups", "--pdeathsig=SIGKILL", "--"}
}
