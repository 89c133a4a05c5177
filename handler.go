package unified

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// healthHandlerWait bounds how long a request to [HealthHandler] waits for
// the first probe round of a Connector that has not probed yet. It is well
// under a typical probe timeout (Kubernetes' default is 1 s, 3 s is usual
// for this endpoint), and a probed cluster answers at once.
const healthHandlerWait = 2 * time.Second

// HealthHandler returns an [http.Handler] that reports the cluster health of
// db, as [Connector.Health] sees it, as one JSON document. db must come from
// sql.Open("unified", ...) or [OpenDB].
//
// The status code answers one question, chosen by the "mode" query
// parameter:
//
//   - no mode, or mode=write: can writes be served? 200 when a primary is
//     known and its circuit breaker is not open (Health.Writable), 503
//     otherwise.
//   - mode=read: can reads be served? 200 when an eligible replica exists,
//     or the primary can serve them with unified_read_fallback=primary
//     (Health.Readable), 503 otherwise.
//
// After db.Close both are 503. Any other mode is 400. Only GET and HEAD are
// allowed (405 otherwise; HEAD sends the headers only). A db that is not a
// unified DB, or nil, gives 500. The body of a 400, 405 or 500 is
// {"error": "..."}. Every response has Content-Type: application/json and
// Cache-Control: no-store.
//
// The first request to a DB that has not run a statement yet starts its
// health monitor and waits, at most 2 s and within the request's context,
// for every node's first probe; later requests read the current topology
// snapshot without I/O. Node errors are the probe errors the driver keeps,
// which never contain a password.
//
// # Body
//
//	{
//	  "status": "ok",                        // "ok" or "unavailable": the answer for mode
//	  "mode": "write",                       // "write" or "read"
//	  "writable": true,                      // Health.Writable
//	  "readable": true,                      // Health.Readable
//	  "primary": "db1:5432",                 // the primary node's name; null when none
//	  "topology_at": "2025-01-02T15:04:05.123Z", // last snapshot (UTC); null before the first probe
//	  "topology_age_seconds": 0.21,          // its age when served; null before the first probe
//	  "nodes": [{                            // in DSN order
//	    "name": "db2:5432",                  // host:port as in the DSN
//	    "role": "replica",                   // "primary", "replica" or "unknown"
//	    "state": "up",                       // "up", "down", "lagging", "fenced" or "unknown"
//	    "lag_bytes": 8192,                   // WAL bytes behind the primary; 0 for the primary
//	    "lag_seconds": 0.012,                // the same in time
//	    "lag": "12ms",                       // the same for humans
//	    "rtt_seconds": 0.00041,              // the last probe's round trip
//	    "rtt": "410µs",
//	    "timeline": 1,                       // 0 when never probed
//	    "breaker": "closed",                 // "closed", "half-open" or "open"
//	    "last_error": "",                    // the last probe's error; "" when it succeeded
//	    "last_seen": "2025-01-02T15:04:05.1Z", // last successful probe (UTC); null when never
//	    "since": "2025-01-02T15:00:00Z"      // when state last changed (UTC); null when never
//	  }]
//	}
//
// # Kubernetes
//
// The handler is meant for a readiness probe: a pod whose database cannot
// serve it stops receiving traffic until it can. Probe the default mode for
// a service that writes and mode=read for a read-only one. Do not use it as
// a liveness probe: restarting the application does not bring a primary
// back.
//
//	http.Handle("/healthz", unified.HealthHandler(db))
//
//	readinessProbe:
//	  httpGet:
//	    path: /healthz?mode=read   # or /healthz for a service that writes
//	    port: 8080
//	  periodSeconds: 5
//	  timeoutSeconds: 3
//	  failureThreshold: 2
//
// The handler is safe for concurrent use.
func HealthHandler(db *sql.DB) http.Handler {
	h := &healthHandler{}
	switch {
	case db == nil:
		h.err = "unified: HealthHandler: nil *sql.DB"
	default:
		c, ok := ConnectorOf(db)
		if !ok {
			h.err = fmt.Sprintf("unified: HealthHandler: not a unified DB (its driver is %T; open it with sql.Open(%q, dsn) or unified.OpenDB)", db.Driver(), DriverName)
		}
		h.c = c
	}
	return h
}

type healthHandler struct {
	c   *Connector
	err string // set when there is no Connector: every request is a 500
}

// healthReport is the body of a HealthHandler response; HealthHandler's doc
// comment documents each field.
type healthReport struct {
	Status             string       `json:"status"`
	Mode               string       `json:"mode"`
	Writable           bool         `json:"writable"`
	Readable           bool         `json:"readable"`
	Primary            *string      `json:"primary"`
	TopologyAt         *time.Time   `json:"topology_at"`
	TopologyAgeSeconds *float64     `json:"topology_age_seconds"`
	Nodes              []nodeReport `json:"nodes"`
}

type nodeReport struct {
	Name       string     `json:"name"`
	Role       string     `json:"role"`
	State      string     `json:"state"`
	LagBytes   uint64     `json:"lag_bytes"`
	LagSeconds float64    `json:"lag_seconds"`
	Lag        string     `json:"lag"`
	RTTSeconds float64    `json:"rtt_seconds"`
	RTT        string     `json:"rtt"`
	Timeline   uint32     `json:"timeline"`
	Breaker    string     `json:"breaker"`
	LastError  string     `json:"last_error"`
	LastSeen   *time.Time `json:"last_seen"`
	Since      *time.Time `json:"since"`
}

type errorReport struct {
	Error string `json:"error"`
}

func (h *healthHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, r, http.StatusMethodNotAllowed, errorReport{Error: "unified: HealthHandler: method " + r.Method + " not allowed (GET or HEAD)"})
		return
	}
	if h.c == nil {
		writeJSON(w, r, http.StatusInternalServerError, errorReport{Error: h.err})
		return
	}
	var read bool
	switch mode := r.URL.Query().Get("mode"); mode {
	case "", "write":
	case "read":
		read = true
	default:
		writeJSON(w, r, http.StatusBadRequest, errorReport{Error: "unified: HealthHandler: mode " + strconv.Quote(mode) + " is not \"write\" or \"read\""})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), healthHandlerWait)
	defer cancel()
	health := h.c.Health(ctx)
	select {
	case <-h.c.closed:
		// A closed DB serves nothing, whatever its last snapshot said.
		health.Writable, health.Readable = false, false
	default:
	}
	rep := newHealthReport(health, read)
	code := http.StatusOK
	if rep.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, r, code, rep)
}

// newHealthReport renders h as the handler's body; read selects the
// question the status answers.
func newHealthReport(h Health, read bool) healthReport {
	rep := healthReport{Mode: "write", Writable: h.Writable, Readable: h.Readable, Nodes: []nodeReport{}}
	ok := h.Writable
	if read {
		rep.Mode, ok = "read", h.Readable
	}
	rep.Status = "unavailable"
	if ok {
		rep.Status = "ok"
	}
	if h.Primary != "" {
		rep.Primary = &h.Primary
	}
	if !h.At.IsZero() {
		rep.TopologyAt = utcTime(h.At)
		age := h.Age.Seconds()
		rep.TopologyAgeSeconds = &age
	}
	for _, n := range h.Nodes {
		rep.Nodes = append(rep.Nodes, nodeReport{
			Name:       n.Name,
			Role:       n.Role,
			State:      n.State,
			LagBytes:   n.LagBytes,
			LagSeconds: n.Lag.Seconds(),
			Lag:        n.Lag.Round(time.Millisecond).String(),
			RTTSeconds: n.RTT.Seconds(),
			RTT:        n.RTT.Round(time.Microsecond).String(),
			Timeline:   n.Timeline,
			Breaker:    n.Breaker,
			LastError:  n.LastError,
			LastSeen:   utcTime(n.LastSeen),
			Since:      utcTime(n.Since),
		})
	}
	return rep
}

// utcTime is t in UTC without its monotonic reading; nil for the zero time
// (encoded as null).
func utcTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC().Round(0)
	return &u
}

// writeJSON sends v with code; for HEAD, the headers only.
func writeJSON(w http.ResponseWriter, r *http.Request, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Unreachable: the report types always encode.
		code = http.StatusInternalServerError
		body, _ = json.Marshal(errorReport{Error: "unified: HealthHandler: " + err.Error()})
	}
	body = append(body, '\n')
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
