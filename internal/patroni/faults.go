package patroni

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/unifiedsql/unified/internal/pgcluster"
)

// Crash kills node i like a machine that dies: its Patroni, its
// PostgreSQL with every backend, and any pg_rewind or pg_basebackup it runs
// get SIGKILL at once (a hung node too). It returns when none of them is
// left; the leader key, if node i held it, stays in etcd until its TTL
// runs out. StartNode brings the node back. It is an error if node i is
// not running.
func (c *Cluster) Crash(i int) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	if !c.Running(i) {
		return fmt.Errorf("patroni: %s is not running", n.Name)
	}
	if err := c.kill(n); err != nil {
		return err
	}
	c.logf("patroni: %s crashed", n.Name)
	return nil
}

// Hang freezes node i with SIGSTOP: its Patroni and its PostgreSQL,
// every backend included (each is a session leader of its own, outside the
// postmaster's process group, so each is signalled). Connections to it
// complete their TCP handshake and then get no answer; its Patroni stops
// renewing the leader key. Resume thaws it. It is an error if node i is
// not running or already hung.
func (c *Cluster) Hang(i int) error { return c.setHung(i, true) }

// Resume thaws node i after Hang with SIGCONT to every one of its
// processes. Its Patroni then finds out what happened while it slept (see
// the package documentation about the etcd client). It is an error if
// node i is not hung.
func (c *Cluster) Resume(i int) error { return c.setHung(i, false) }

// setHung hangs (SIGSTOP) or resumes (SIGCONT) every process of node i;
// it is an error if the node already is in that state.
func (c *Cluster) setHung(i int, hang bool) error {
	n, err := c.node(i)
	if err != nil {
		return err
	}
	sig, did, already := syscall.SIGSTOP, "hung", "already hung"
	if !hang {
		sig, did, already = syscall.SIGCONT, "resumed", "not hung"
	}
	if c.Hung(i) == hang {
		return fmt.Errorf("patroni: %s is %s", n.Name, already)
	}
	if err := c.signalNode(n, sig); err != nil {
		return err
	}
	c.mu.Lock()
	n.hung = hang
	c.mu.Unlock()
	c.logf("patroni: %s %s", n.Name, did)
	return nil
}

// StartNode starts node i again after Crash, on its old data directory,
// and returns once its Patroni answers on the REST API. Patroni then
// rejoins it in the background: it starts PostgreSQL as a replica of the
// current leader, rewinding it first with pg_rewind when it went past the
// fork (an old primary), or taking a new base backup when that fails.
// WaitHealthy waits for the rejoin. ctx bounds the wait for the REST API
// (2 minutes without a deadline). It is an error if node i is running.
func (c *Cluster) StartNode(ctx context.Context, i int) error {
	ctx, cancel := pgcluster.WithDefault(ctx)
	defer cancel()
	n, err := c.node(i)
	if err != nil {
		return err
	}
	if c.Running(i) {
		return fmt.Errorf("patroni: %s is running", n.Name)
	}
	// No process of the node is left (Crash waited for that): the
	// postmaster.pid is stale, and its pid, of a dead namespace, may be
	// in use in the new one.
	pgcluster.RemoveShm(n.DataDir)
	_ = os.Remove(filepath.Join(n.DataDir, "postmaster.pid"))
	if err := c.startNode(n); err != nil {
		return err
	}
	for {
		if err := c.nodeExited(n); err != nil {
			return err
		}
		if _, _, err := c.restGet(ctx, n, "/patroni"); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("patroni: %s's REST API does not answer: %w; log:\n%s", n.Name, ctx.Err(), c.LogTail(i, 20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Switchover asks the leader's Patroni (POST /switchover) to hand the
// leadership to node candidate, or to a replica of its choice when
// candidate is -1. Patroni shuts the leader down cleanly, promotes the
// candidate and has the old leader follow it. Switchover returns when
// Patroni reports the leader key moved (it polls once a second), which can
// be before the new leader accepts writes: WaitLeaderWritable times that.
// With Options.Synchronous, Patroni refuses (HTTP 412) a candidate that is
// not the synchronous standby. ctx bounds the whole call (2 minutes
// without a deadline).
func (c *Cluster) Switchover(ctx context.Context, candidate int) error {
	ctx, cancel := pgcluster.WithDefault(ctx)
	defer cancel()
	l, err := c.Leader(ctx)
	if err != nil {
		return err
	}
	req := map[string]string{"leader": c.nodes[l].Name}
	if candidate >= 0 {
		n, err := c.node(candidate)
		if err != nil {
			return err
		}
		if candidate == l {
			return fmt.Errorf("patroni: %s already leads", n.Name)
		}
		req["candidate"] = n.Name
	}
	body, _ := json.Marshal(req)
	code, resp, err := c.do(ctx, http.MethodPost, c.nodes[l].RESTURL()+"/switchover", body)
	if err != nil {
		return fmt.Errorf("patroni: switchover from %s: %w", c.nodes[l].Name, err)
	}
	if code != http.StatusOK {
		return fmt.Errorf("patroni: switchover from %s: HTTP %d: %s", c.nodes[l].Name, code, trimBody(resp))
	}
	c.logf("patroni: switchover from %s: %s", c.nodes[l].Name, trimBody(resp))
	return nil
}

// Heal brings the cluster back after a test's faults: it resumes every
// hung node, starts every crashed one and waits until the cluster is
// healthy (see WaitHealthy). It stops at the first error.
func (c *Cluster) Heal(ctx context.Context) error {
	for i := range c.Len() {
		if c.Hung(i) {
			if err := c.Resume(i); err != nil {
				return err
			}
		}
		if !c.Running(i) {
			if err := c.StartNode(ctx, i); err != nil {
				return err
			}
		}
	}
	return c.WaitHealthy(ctx)
}
