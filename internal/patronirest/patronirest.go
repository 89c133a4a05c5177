// Package patronirest reads the members of a Patroni cluster from its REST
// API: GET /cluster, as Patroni 3 answers it. It parses; it decides nothing.
// Roles in the answer are Patroni's view, which lags the nodes' own (it
// calls a node the leader while it is still in recovery): the driver takes
// roles from the nodes and uses this only for who the members are, their
// tags, and a scheduled switchover.
package patronirest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Cluster is the part of GET /cluster the driver uses.
type Cluster struct {
	Members []Member
	// Switchover is a scheduled switchover, nil when none is.
	Switchover *Switchover
}

// Member is one Patroni member.
type Member struct {
	Name  string
	Role  string // "leader", "standby_leader", "sync_standby", "replica"
	State string // "running", "streaming", "stopped", ...
	Host  string // its PostgreSQL's address; "" when Patroni does not say
	Port  int    // 0 when Patroni does not say
	// NoLoadBalance and NoFailover are the member's tags.
	NoLoadBalance bool
	NoFailover    bool
}

// Switchover is a switchover Patroni has scheduled.
type Switchover struct {
	At   time.Time
	From string // the leader it moves away from ("" when not given)
	To   string // the candidate ("" when Patroni chooses)
}

type wireCluster struct {
	Members []struct {
		Name  string          `json:"name"`
		Role  string          `json:"role"`
		State string          `json:"state"`
		Host  string          `json:"host"`
		Port  json.RawMessage `json:"port"`
		Tags  map[string]any  `json:"tags"`
	} `json:"members"`
	Switchover *struct {
		At   string `json:"at"`
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"scheduled_switchover"`
}

// Parse reads a GET /cluster body.
func Parse(body []byte) (Cluster, error) {
	var w wireCluster
	if err := json.Unmarshal(body, &w); err != nil {
		return Cluster{}, fmt.Errorf("patronirest: /cluster: %w", err)
	}
	var c Cluster
	for _, m := range w.Members {
		if m.Name == "" {
			return Cluster{}, fmt.Errorf("patronirest: /cluster: a member without a name")
		}
		port, err := parsePort(m.Port)
		if err != nil {
			return Cluster{}, fmt.Errorf("patronirest: /cluster: member %q: %w", m.Name, err)
		}
		c.Members = append(c.Members, Member{
			Name: m.Name, Role: m.Role, State: m.State, Host: m.Host, Port: port,
			NoLoadBalance: truthy(m.Tags["noloadbalance"]), NoFailover: truthy(m.Tags["nofailover"]),
		})
	}
	if s := w.Switchover; s != nil {
		at, err := time.Parse(time.RFC3339Nano, s.At)
		if err != nil {
			return Cluster{}, fmt.Errorf("patronirest: /cluster: scheduled_switchover at %q: %w", s.At, err)
		}
		c.Switchover = &Switchover{At: at, From: s.From, To: s.To}
	}
	return c, nil
}

// parsePort accepts a JSON number or a string of digits (Patroni writes an
// int; configuration management tools put strings in), 0 when absent.
func parsePort(raw json.RawMessage) (int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	var n int
	if err := json.Unmarshal(raw, &n); err == nil {
		if n < 1 || n > 65535 {
			return 0, fmt.Errorf("port %d out of range", n)
		}
		return n, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, fmt.Errorf("port %s is not a number", raw)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a port", s)
	}
	return n, nil
}

// truthy is a Patroni tag's truth: true, "true", "on", "yes" (any case).
func truthy(v any) bool {
	switch x := v.(type) {
	case bool:
		return x
	case string:
		switch x {
		case "true", "True", "TRUE", "on", "On", "ON", "yes", "Yes", "YES":
			return true
		}
	}
	return false
}

// Fetch gets and parses base + "/cluster" with client, within ctx. A
// status other than 200 is an error.
func Fetch(ctx context.Context, client *http.Client, base string) (Cluster, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/cluster", nil)
	if err != nil {
		return Cluster{}, fmt.Errorf("patronirest: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return Cluster{}, fmt.Errorf("patronirest: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Cluster{}, fmt.Errorf("patronirest: %s/cluster: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Cluster{}, fmt.Errorf("patronirest: %s/cluster: %s", base, resp.Status)
	}
	return Parse(body)
}
