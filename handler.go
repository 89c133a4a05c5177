package unified

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
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
// {"error": "..."}. Every response has Cache-Control: no-store and Vary:
// Accept.
//
// The body is JSON (Content-Type: application/json) unless the request's
// Accept header prefers text/html to application/json, as a browser's
// does: then it is a status page of the same data, with the same status
// code (see Status page below).
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
//	  "leaving": null,                       // the primary a scheduled Patroni switchover is about to replace (Health.Leaving); null when none
//	  "nodes": [{                            // in DSN order
//	    "name": "db2:5432",                  // host:port as in the DSN, or host/address:port for an address a name resolved to
//	    "host": "db2",                       // NodeHealth.Host, Address and Source ("dsn", "dns" or "patroni")
//	    "address": "",
//	    "source": "dsn",
//	    "role": "replica",                   // "primary", "replica" or "unknown"
//	    "state": "up",                       // "up", "down", "lagging", "fenced", "diverged", "alias" or "unknown"
//	    "alias_of": "",                      // for "alias": the node it is the same server as
//	    "lag_bytes": 8192,                   // WAL bytes behind the primary; 0 for the primary
//	    "lag_seconds": 0.012,                // the same in time
//	    "lag": "12ms",                       // the same for humans
//	    "lag_unknown": false,                // true: behind every sample of the primary's position; the lag is a lower bound
//	    "lsn": "0/3000148",                  // the WAL position at the last probe (replay position on a replica)
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
// # Status page
//
// For a browser the handler answers with a small HTML page: the status
// and the question it answers, the primary, the age of the topology, a
// table of the nodes (role, state, lag in time and bytes, round trip,
// timeline, breaker, last successful probe, when the state last changed,
// the last probe error), the Connector's counters ([Connector.Stats]) and
// the nodes' last state changes in time order. It reloads itself every 2
// seconds (a meta refresh, no script: the page's Content-Security-Policy
// allows none), keeping the mode parameter. Every value is escaped
// (html/template); like the JSON it holds no password.
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
	Leaving            *string      `json:"leaving"`
	Nodes              []nodeReport `json:"nodes"`
}

type nodeReport struct {
	Name       string     `json:"name"`
	Host       string     `json:"host"`
	Address    string     `json:"address"`
	Source     string     `json:"source"`
	Role       string     `json:"role"`
	State      string     `json:"state"`
	AliasOf    string     `json:"alias_of"`
	LagBytes   uint64     `json:"lag_bytes"`
	LagSeconds float64    `json:"lag_seconds"`
	Lag        string     `json:"lag"`
	LagUnknown bool       `json:"lag_unknown"`
	LSN        string     `json:"lsn"`
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
	if prefersHTML(r.Header.Get("Accept")) {
		writeStatusPage(w, r, code, newStatusPage(rep, h.c.Stats(), time.Now()))
		return
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
	if h.Leaving != "" {
		rep.Leaving = &h.Leaving
	}
	if !h.At.IsZero() {
		rep.TopologyAt = utcTime(h.At)
		age := h.Age.Seconds()
		rep.TopologyAgeSeconds = &age
	}
	for _, n := range h.Nodes {
		rep.Nodes = append(rep.Nodes, nodeReport{
			Name:       n.Name,
			Host:       n.Host,
			Address:    n.Address,
			Source:     n.Source,
			Role:       n.Role,
			State:      n.State,
			AliasOf:    n.AliasOf,
			LagBytes:   n.LagBytes,
			LagSeconds: n.Lag.Seconds(),
			Lag:        n.Lag.Round(time.Millisecond).String(),
			LagUnknown: n.LagUnknown,
			LSN:        n.LSN,
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
	hdr.Set("Vary", "Accept")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// prefersHTML reports whether an Accept header ranks text/html (or
// application/xhtml+xml, or text/*) above application/json (or
// application/*, or */*). A tie, no header, or one naming neither is JSON:
// a health check client gets what it always got.
func prefersHTML(accept string) bool {
	var html, json float64
	for _, part := range strings.Split(accept, ",") {
		media, params, _ := strings.Cut(part, ";")
		media = strings.ToLower(strings.TrimSpace(media))
		q := 1.0
		for _, p := range strings.Split(params, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && f >= 0 && f <= 1 {
					q = f
				} else {
					q = 0
				}
			}
		}
		switch media {
		case "text/html", "application/xhtml+xml", "text/*":
			html = max(html, q)
		case "application/json", "application/*", "*/*":
			json = max(json, q)
		}
	}
	return html > json
}

// statusPage is what the status page shows; the report's fields, made
// readable.
type statusPage struct {
	healthReport
	Primary     string // "" when none
	TopologyAge string // "" before the first probe
	TopologyAt  string
	Nodes       []statusNode
	Stats       Stats
	Changes     []statusChange // the nodes' last state changes, oldest first
	Refresh     int            // seconds
	Now         string
}

type statusNode struct {
	nodeReport
	LagBytes string
	LastSeen string
	Since    string
}

type statusChange struct {
	at                    time.Time
	At, Node, State, Role string
}

// statusRefresh is how often the status page reloads itself, in seconds.
const statusRefresh = 2

func newStatusPage(rep healthReport, st Stats, now time.Time) statusPage {
	p := statusPage{healthReport: rep, Stats: st, Refresh: statusRefresh, Now: clock(now)}
	if rep.Primary != nil {
		p.Primary = *rep.Primary
	}
	if rep.TopologyAt != nil {
		p.TopologyAt = clock(*rep.TopologyAt)
		p.TopologyAge = (time.Duration(*rep.TopologyAgeSeconds * float64(time.Second))).Round(time.Millisecond).String()
	}
	for _, n := range rep.Nodes {
		sn := statusNode{nodeReport: n, LagBytes: byteCount(n.LagBytes)}
		if n.LastSeen != nil {
			sn.LastSeen = clock(*n.LastSeen)
		}
		if n.Since != nil {
			sn.Since = clock(*n.Since)
			p.Changes = append(p.Changes, statusChange{at: *n.Since, At: sn.Since, Node: n.Name, State: n.State, Role: n.Role})
		}
		p.Nodes = append(p.Nodes, sn)
	}
	slices.SortStableFunc(p.Changes, func(a, b statusChange) int { return a.at.Compare(b.at) })
	return p
}

// clock is t as the page shows it: UTC with milliseconds.
func clock(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000Z") }

func byteCount(n uint64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// statusTemplate is the status page. html/template escapes every value
// for where it stands (text, attribute, URL).
var statusTemplate = template.Must(template.New("status").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{{.Refresh}}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>unified: {{.Status}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.5em; }
.badge { padding: .1em .5em; border-radius: .3em; color: #fff; background: #2a7; }
.badge.unavailable { background: #c33; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .7em; text-align: left; white-space: nowrap; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.error { white-space: normal; max-width: 40em; color: #a22; }
tr.down td, tr.fenced td { background: #fde8e8; }
tr.lagging td, tr.diverged td { background: #fff6d6; }
.primary { font-weight: 600; }
footer { margin-top: 2em; color: #777; font-size: .9em; }
</style>
</head>
<body>
<h1>unified <span class="badge {{.Status}}" id="status">{{.Status}}</span></h1>
<p id="summary">{{if eq .Mode "read"}}Can reads be served?{{else}}Can writes be served?{{end}}
writable: <b>{{.Writable}}</b>, readable: <b>{{.Readable}}</b>,
primary: <b>{{if .Primary}}{{.Primary}}{{else}}none{{end}}</b>,
{{if .TopologyAt}}topology of {{.TopologyAt}} ({{.TopologyAge}} old){{else}}no topology yet{{end}}.</p>
<table id="nodes">
<thead><tr><th>node</th><th>role</th><th>state</th><th>lag</th><th>lag (WAL)</th><th>RTT</th><th>timeline</th><th>breaker</th><th>last seen</th><th>state since</th><th>last error</th></tr></thead>
<tbody>
{{- range .Nodes}}
<tr class="node {{.State}}"><td class="name {{.Role}}">{{.Name}}</td><td>{{.Role}}</td><td>{{.State}}</td><td class="num">{{.Lag}}</td><td class="num">{{.LagBytes}}</td><td class="num">{{.RTT}}</td><td class="num">{{.Timeline}}</td><td>{{.Breaker}}</td><td>{{.LastSeen}}</td><td>{{.Since}}</td><td class="error">{{.LastError}}</td></tr>
{{- end}}
</tbody>
</table>
<h2>Counters</h2>
<p id="counters">failovers {{.Stats.Failovers}}, retries {{.Stats.Retries}}, commit outcome unknown {{.Stats.CommitUnknown}}, reads served by the primary for want of a replica {{.Stats.ReadFallbacks}}</p>
<h2>Timeline</h2>
<ol id="timeline">
{{- range .Changes}}
<li>{{.At}}: {{.Node}} became {{.State}} ({{.Role}})</li>
{{- else}}
<li>no state change yet</li>
{{- end}}
</ol>
<footer>{{.Now}} · reloads every {{.Refresh}} s · the same URL gives JSON to clients that do not ask for HTML</footer>
</body>
</html>
`))

// writeStatusPage sends the status page with code; for HEAD, the headers
// only.
func writeStatusPage(w http.ResponseWriter, r *http.Request, code int, p statusPage) {
	var body bytes.Buffer
	if err := statusTemplate.Execute(&body, p); err != nil {
		// Unreachable: the template and its data are fixed.
		writeJSON(w, r, http.StatusInternalServerError, errorReport{Error: "unified: HealthHandler: " + err.Error()})
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Vary", "Accept")
	hdr.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Content-Length", strconv.Itoa(body.Len()))
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body.Bytes())
	}
}
