package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Restore brings the cluster back to its initial shape after a test that
// faulted it: every node running and not hung, default pg_hba.conf,
// replay resumed, node 0 the only primary with every other node streaming
// from it, synchronous replication off. It resumes, restarts, promotes,
// switches over (catch up, fast stop of the other primary, promote node 0),
// re-points, rewinds or rebuilds nodes as needed, so it can take seconds,
// and it may discard writes made on a node that is no longer the primary.
// Without a deadline in ctx it gives up after two minutes.
func (c *Cluster) Restore(ctx context.Context) error {
	ctx, cancel := WithDefault(ctx)
	defer cancel()
	t0 := time.Now()
	N := len(c.nodes)
	broken := make([]bool, N)
	rec := make([]bool, N)

	// 1. Everything running, answering, reachable.
	for i := range c.nodes {
		if c.Hung(i) {
			if err := c.Continue(i); err != nil {
				return err
			}
		}
		if !c.Running(i) {
			// A standby that cannot reach a consistent state (its WAL
			// source lacks what it needs) would never accept connections.
			since := c.nodes[i].logSize()
			sctx, scancel := context.WithTimeout(ctx, 15*time.Second)
			err := c.startProcess(sctx, c.nodes[i])
			if err == nil {
				err = c.waitReady(sctx, c.nodes[i], since)
			}
			scancel()
			if err != nil {
				c.logf("pgcluster: restore: %v", err)
				broken[i] = true
				if err := c.StopContext(ctx, i, "immediate"); err != nil {
					return err
				}
				continue
			}
		}
		if !c.hbaIsDefault(i) {
			if err := c.WriteHBA(ctx, i, nil); err != nil {
				return err
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}

	// 2. Who is what; nothing paused, nothing waiting for a sync standby.
	var prims []int
	for i := range c.nodes {
		if broken[i] {
			continue
		}
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := c.InRecovery(qctx, i)
		qcancel()
		if err != nil {
			c.logf("pgcluster: restore: %s: %v", c.nodes[i].Name, err)
			broken[i] = true
			continue
		}
		rec[i] = r
		if r {
			if err := c.ResumeReplay(ctx, i); err != nil {
				c.logf("pgcluster: restore: %v", err)
			}
			continue
		}
		prims = append(prims, i)
		if err := c.SetSynchronous(ctx, i, false); err != nil {
			c.logf("pgcluster: restore: %v", err)
		}
	}

	// 3. A primary to start from: node 0 if it is one, else the primary on
	// the highest timeline, else promote a standby.
	p := -1
	switch {
	case !broken[0] && !rec[0]:
		p = 0
	case len(prims) > 0:
		var best uint64
		for _, i := range prims {
			tl, err := c.timeline(ctx, i)
			if err != nil {
				c.logf("pgcluster: restore: %s: %v", c.nodes[i].Name, err)
				continue
			}
			if p < 0 || tl > best {
				p, best = i, tl
			}
		}
	}
	if p < 0 {
		cand := -1
		for i := range c.nodes {
			if !broken[i] && rec[i] {
				cand = i
				break
			}
		}
		if cand < 0 {
			return errors.New("pgcluster: restore: no node can be started or promoted")
		}
		if _, err := c.Promote(ctx, cand); err != nil {
			return fmt.Errorf("pgcluster: restore: %w", err)
		}
		p = cand
	}

	// 4. Switch over to node 0: make it p's standby, let it catch up, stop p
	// cleanly (its last WAL reaches node 0), promote node 0.
	if p != 0 {
		c.logf("pgcluster: restore: switching over from %s to node0", c.nodes[p].Name)
		if err := c.ensureStandby(ctx, 0, p); err != nil {
			return fmt.Errorf("pgcluster: restore: %w", err)
		}
		if err := c.WaitCatchUp(ctx, 0, p); err != nil {
			return fmt.Errorf("pgcluster: restore: %w", err)
		}
		if err := c.StopContext(ctx, p, "fast"); err != nil {
			return fmt.Errorf("pgcluster: restore: %w", err)
		}
		if _, err := c.Promote(ctx, 0); err != nil {
			return fmt.Errorf("pgcluster: restore: %w", err)
		}
	}

	// 5. Everyone else streams from node 0.
	errs := make([]error, N)
	for j := 1; j < N; j++ {
		errs[j] = c.ensureStandby(ctx, j, 0)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pgcluster: restore: %w", err)
	}

	// 6. Synchronous off, default pg_hba (rebuilt nodes copied node 0's).
	if err := c.SetSynchronous(ctx, 0, false); err != nil {
		return fmt.Errorf("pgcluster: restore: %w", err)
	}
	for i := range c.nodes {
		if !c.hbaIsDefault(i) {
			if err := c.WriteHBA(ctx, i, nil); err != nil {
				return err
			}
		}
	}

	// 7. Check.
	if got, err := c.Primary(ctx); err != nil || got != 0 {
		return fmt.Errorf("pgcluster: restore: primary is %d, not node0 (%v)", got, err)
	}
	for j := 1; j < N; j++ {
		if err := c.waitStreaming(ctx, j, 0, c.nodes[j].logSize()); err != nil {
			c.logf("pgcluster: restore: %v; rejoining", err)
			if err := c.Rejoin(ctx, j, 0); err != nil {
				return fmt.Errorf("pgcluster: restore: %w", err)
			}
		}
	}
	c.logf("pgcluster: restored in %v", time.Since(t0).Round(time.Millisecond))
	return nil
}

// ensureStandby makes node j a standby streaming from node p: nothing to do
// if it already is one (it must stream p's new WAL within 3 s: a standby
// that cannot follow p also shows "streaming" for a moment on each retry),
// Repoint if it is a running standby of another node (3 s), Rejoin
// otherwise or when that fails.
func (c *Cluster) ensureStandby(ctx context.Context, j, p int) error {
	if c.Running(j) && !c.Hung(j) {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		rec, err := c.InRecovery(qctx, j)
		cancel()
		if err == nil && rec {
			since := c.nodes[j].logSize()
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			if ok, _ := c.Streaming(rctx, j, p); ok {
				err = c.waitStreaming(rctx, j, p, since)
			} else {
				err = c.Repoint(rctx, j, p)
			}
			cancel()
			if err == nil {
				return nil
			}
			c.logf("pgcluster: %v; rejoining instead", err)
		}
	}
	return c.Rejoin(ctx, j, p)
}
