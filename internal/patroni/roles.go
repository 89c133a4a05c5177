package patroni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

const (
	// askTimeout bounds one question to one node (a hung node accepts TCP
	// connections and never answers).
	askTimeout = 2 * time.Second
)

// connect opens a connection to n's PostgreSQL as postgres; nothing from
// the environment ($PGOPTIONS, $PGTARGETSESSIONATTRS...) changes it.
func connect(ctx context.Context, n *Node) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(n.DSN())
	if err != nil {
		return nil, err
	}
	cfg.Password, cfg.TLSConfig, cfg.Fallbacks, cfg.ValidateConnect = "", nil, nil, nil
	cfg.ConnectTimeout = askTimeout
	cfg.RuntimeParams = map[string]string{"application_name": "patroni-test"}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	return pgx.ConnectConfig(ctx, cfg)
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// Connect opens a new connection to node i's PostgreSQL as user postgres;
// the caller closes it. Connecting to a hung node fails after a few
// seconds, or when ctx ends.
func (c *Cluster) Connect(ctx context.Context, i int) (*pgx.Conn, error) {
	n, err := c.node(i)
	if err != nil {
		return nil, err
	}
	conn, err := connect(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("patroni: connect to %s: %w", n.Name, err)
	}
	return conn, nil
}

func (c *Cluster) inRecovery(ctx context.Context, n *Node) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	conn, err := connect(ctx, n)
	if err != nil {
		return false, err
	}
	defer closeConn(conn)
	var rec bool
	err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
	return rec, err
}

// get fetches url, each attempt bounded by askTimeout.
func (c *Cluster) get(ctx context.Context, url string) (int, []byte, error) {
	return c.do(ctx, http.MethodGet, url, nil)
}

func (c *Cluster) do(ctx context.Context, method, url string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// restGet asks n's Patroni REST API for path, bounded by askTimeout.
func (c *Cluster) restGet(ctx context.Context, n *Node, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	return c.get(ctx, n.RESTURL()+path)
}

// Leader returns the index of the node that is the primary, asking the
// nodes themselves: exactly one running, not hung, node must answer
// pg_is_in_recovery() = false, and its Patroni must hold the leader key
// (its /primary answers 200). Patroni's /primary alone is not enough: it
// answers 200 while a new leader is still in recovery. Each node gets a
// few seconds. The error says why there is no single leader: none (a
// failover under way), several (an old primary not yet demoted), or one
// that Patroni does not back.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	prim, errs := pgcluster.OutOfRecovery(len(c.nodes),
		func(i int) (string, bool, bool) { return c.nodes[i].Name, c.Running(i), c.Hung(i) },
		func(i int) (bool, error) {
			rec, err := c.inRecovery(ctx, c.nodes[i])
			if err != nil {
				return false, fmt.Errorf("%s: %w", c.nodes[i].Name, err)
			}
			return rec, nil
		})
	switch len(prim) {
	case 0:
		return -1, fmt.Errorf("patroni: no node is out of recovery: %w", errors.Join(errs...))
	case 1:
	default:
		return -1, fmt.Errorf("patroni: several nodes are out of recovery: %v", prim)
	}
	n := c.nodes[prim[0]]
	code, _, err := c.restGet(ctx, n, "/primary")
	if err != nil {
		return -1, fmt.Errorf("patroni: %s is out of recovery, its Patroni does not answer: %w", n.Name, err)
	}
	if code != http.StatusOK {
		return -1, fmt.Errorf("patroni: %s is out of recovery but its Patroni does not hold the leader key (/primary: %d)", n.Name, code)
	}
	return prim[0], nil
}

// WaitHealthy waits until the cluster is whole: every node runs and is not
// hung, one is the Leader, the two others are replicas whose Patroni
// reports them running and which stream from the leader (its
// pg_stat_replication), and with Options.Synchronous one of them is its
// synchronous standby known to Patroni's REST API (which a switchover
// asks). It fails at once, with the log's tail, when a node's processes
// have exited: after Crash, call StartNode first. Without a deadline in
// ctx it waits up to 2 minutes; the error gives the last reason the
// cluster was not healthy.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	ctx, cancel := pgcluster.WithDefault(ctx)
	defer cancel()
	var last error
	for {
		if last = c.healthy(ctx); last == nil {
			return nil
		}
		for _, n := range c.nodes {
			if err := c.nodeExited(n); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("patroni: cluster not healthy (%v): %w", last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) healthy(ctx context.Context) error {
	for i, n := range c.nodes {
		if !c.Running(i) {
			return fmt.Errorf("%s is not running", n.Name)
		}
		if c.Hung(i) {
			return fmt.Errorf("%s is hung", n.Name)
		}
	}
	l, err := c.Leader(ctx)
	if err != nil {
		return err
	}
	qctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	conn, err := connect(qctx, c.nodes[l])
	if err != nil {
		return err
	}
	defer closeConn(conn)
	rows, err := conn.Query(qctx, "SELECT application_name, state, sync_state FROM pg_stat_replication")
	if err != nil {
		return err
	}
	type standby struct{ state, sync string }
	got := map[string]standby{}
	for rows.Next() {
		var name, state, sync string
		if err := rows.Scan(&name, &state, &sync); err != nil {
			return err
		}
		got[name] = standby{state, sync}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	syncName := ""
	for i, n := range c.nodes {
		if i == l {
			continue
		}
		s, ok := got[n.Name]
		if !ok || s.state != "streaming" {
			return fmt.Errorf("%s does not stream from leader %s (%+v)", n.Name, c.nodes[l].Name, s)
		}
		if s.sync == "sync" {
			syncName = n.Name
		}
		code, body, err := c.restGet(ctx, n, "/patroni")
		if err != nil {
			return fmt.Errorf("%s's Patroni: %w", n.Name, err)
		}
		var st struct{ State, Role string }
		if err := json.Unmarshal(body, &st); err != nil {
			return fmt.Errorf("%s's Patroni: /patroni (%d): %w", n.Name, code, err)
		}
		if st.State != "running" || st.Role != "replica" {
			return fmt.Errorf("%s's Patroni reports %s %s", n.Name, st.State, st.Role)
		}
	}
	if !c.opts.Synchronous {
		return nil
	}
	if syncName == "" {
		return fmt.Errorf("leader %s has no synchronous standby yet", c.nodes[l].Name)
	}
	// Patroni's REST API (which a switchover asks) must know it too: its
	// view of the /sync key is refreshed once a loop.
	m, err := c.clusterView(ctx, c.nodes[l])
	if err != nil {
		return err
	}
	for _, mem := range m.Members {
		if mem.Name == syncName && mem.Role == "sync_standby" {
			return nil
		}
	}
	return fmt.Errorf("%s is the synchronous standby but %s's Patroni does not report it yet", syncName, c.nodes[l].Name)
}

// WaitLeaderWritable polls pg_is_in_recovery() on every node but not (-1:
// none excluded), every few milliseconds over a connection kept open, and
// returns the first node that answers false with the time the answer
// arrived: when a new leader accepts writes, which Patroni's /primary and
// pg_ctl promote both report late. Hung and crashed nodes are skipped
// until they run again. Without a deadline in ctx it waits up to 2
// minutes; the error then says no node became writable.
func (c *Cluster) WaitLeaderWritable(ctx context.Context, not int) (int, time.Time, error) {
	ctx, cancel := pgcluster.WithDefault(ctx)
	defer cancel()
	type found struct {
		i  int
		at time.Time
	}
	ch := make(chan found, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		if i == not {
			continue
		}
		wg.Go(func() {
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					closeConn(conn)
				}
			}()
			for ctx.Err() == nil {
				if !c.Running(i) || c.Hung(i) {
					if conn != nil {
						closeConn(conn)
						conn = nil
					}
				} else {
					if conn == nil {
						conn, _ = connect(ctx, n)
					}
					if conn != nil {
						qctx, qcancel := context.WithTimeout(ctx, askTimeout)
						var rec bool
						err := conn.QueryRow(qctx, "SELECT pg_is_in_recovery()").Scan(&rec)
						qcancel()
						if err == nil && !rec {
							ch <- found{i, time.Now()}
							return
						}
						if err != nil {
							closeConn(conn)
							conn = nil
						}
					}
				}
				select {
				case <-ctx.Done():
				case <-time.After(5 * time.Millisecond):
				}
			}
		})
	}
	var res found
	var err error
	select {
	case res = <-ch:
	case <-ctx.Done():
		err = fmt.Errorf("patroni: no node%s became writable: %w", excluding(c, not), ctx.Err())
	}
	cancel()
	wg.Wait()
	if err != nil {
		return -1, time.Time{}, err
	}
	return res.i, res.at, nil
}

func excluding(c *Cluster, not int) string {
	if n := c.Node(not); n != nil {
		return " but " + n.Name
	}
	return ""
}

// members is Patroni's /cluster answer, the part used here.
type members struct {
	Members []struct {
		Name     string `json:"name"`
		Role     string `json:"role"`
		State    string `json:"state"`
		Timeline int    `json:"timeline"`
	} `json:"members"`
}

// clusterView asks n's Patroni for /cluster.
func (c *Cluster) clusterView(ctx context.Context, n *Node) (members, error) {
	var m members
	code, body, err := c.restGet(ctx, n, "/cluster")
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("/cluster: %d", code)
	}
	if err == nil {
		err = json.Unmarshal(body, &m)
	}
	if err != nil {
		return m, fmt.Errorf("%s's Patroni: %w", n.Name, err)
	}
	return m, nil
}

// PatroniLeader returns the node whose name Patroni's /cluster gives as
// leader, asking the running, not hung, nodes in turn; -1 when the leader
// key is free. It is Patroni's view, which may run ahead of PostgreSQL's:
// see Leader.
func (c *Cluster) PatroniLeader(ctx context.Context) (int, error) {
	var errs []error
	for i, n := range c.nodes {
		if !c.Running(i) || c.Hung(i) {
			continue
		}
		m, err := c.clusterView(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, mem := range m.Members {
			if mem.Role == "leader" {
				for j, o := range c.nodes {
					if o.Name == mem.Name {
						return j, nil
					}
				}
				return -1, fmt.Errorf("patroni: unknown leader %q", mem.Name)
			}
		}
		return -1, nil
	}
	return -1, fmt.Errorf("patroni: no Patroni answers /cluster: %w", errors.Join(errs...))
}

func trimBody(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
