package pgcluster

import (
	"context"
	"slices"
	"time"
)

// Others returns the indexes of every node but i, in order.
func (c *Cluster) Others(i int) []int {
	var out []int
	for j := 0; j < c.Len(); j++ {
		if j != i {
			out = append(out, j)
		}
	}
	return out
}

// MostAdvanced returns the candidate standby that received the most WAL:
// promoting it loses the fewest commits (none that a synchronous commit
// waited for), as a failover manager would choose. WAL the failed primary
// sent just before it went may still be arriving, so it first waits (up to
// 2 s) until no candidate's receive position moves.
func (c *Cluster) MostAdvanced(ctx context.Context, candidates ...int) (int, error) {
	var prev []int64
	for deadline := time.Now().Add(2 * time.Second); ; {
		lsns := make([]int64, len(candidates))
		for k, i := range candidates {
			err := c.QueryRow(ctx, i, "SELECT COALESCE((pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::int8, 0)").Scan(&lsns[k])
			if err != nil {
				return -1, err
			}
		}
		if slices.Equal(lsns, prev) || time.Now().After(deadline) {
			best := 0
			for k := range lsns {
				if lsns[k] > lsns[best] {
					best = k
				}
			}
			return candidates[best], nil
		}
		prev = lsns
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return -1, ctx.Err()
		}
	}
}

// Follow makes each standby stream from primary after a promotion: Repoint,
// or, when the standby cannot follow (it replayed past the point where the
// new primary's timeline forked off), Rejoin, which rewinds or rebuilds it.
// It returns the standbys that had to be rejoined.
func (c *Cluster) Follow(ctx context.Context, primary int, standbys ...int) (rejoined []int, err error) {
	for _, j := range standbys {
		if j == primary {
			continue
		}
		if err := c.Repoint(ctx, j, primary); err != nil {
			c.logf("pgcluster: %s cannot follow %s (%v); rejoining it", c.nodes[j].Name, c.nodes[primary].Name, err)
			if err := c.Rejoin(ctx, j, primary); err != nil {
				return rejoined, err
			}
			rejoined = append(rejoined, j)
		}
	}
	return rejoined, nil
}

// FailOver does what a failover manager does once node failed is lost
// (killed, hung, stopped): it promotes the most advanced of the other nodes
// and makes the rest follow it (Follow). It returns the new primary, the
// moment it accepted writes (Promote) and the nodes that had to be rejoined.
func (c *Cluster) FailOver(ctx context.Context, failed int) (primary int, promotedAt time.Time, rejoined []int, err error) {
	rest := c.Others(failed)
	if primary, err = c.MostAdvanced(ctx, rest...); err != nil {
		return -1, time.Time{}, nil, err
	}
	if promotedAt, err = c.Promote(ctx, primary); err != nil {
		return -1, time.Time{}, nil, err
	}
	rejoined, err = c.Follow(ctx, primary, rest...)
	return primary, promotedAt, rejoined, err
}
