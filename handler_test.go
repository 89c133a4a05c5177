package unified_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
	"github.com/unifiedsql/unified/unifiedtest"
)

// healthBody is HealthHandler's JSON document as a client decodes it.
type healthBody struct {
	Status             string     `json:"status"`
	Mode               string     `json:"mode"`
	Writable           bool       `json:"writable"`
	Readable           bool       `json:"readable"`
	Primary            *string    `json:"primary"`
	TopologyAt         *time.Time `json:"topology_at"`
	TopologyAgeSeconds *float64   `json:"topology_age_seconds"`
	Nodes              []struct {
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
	} `json:"nodes"`
	Error string `json:"error"`
}

// serveHealth sends one request to h and decodes the answer, checking the
// headers every response carries.
func serveHealth(t *testing.T, h http.Handler, method, target string) (*httptest.ResponseRecorder, healthBody) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), method, target, nil))
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	assert.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
	var body healthBody
	if method != http.MethodHead {
		dec := json.NewDecoder(rec.Body)
		require.NoError(t, dec.Decode(&body), "body: %s", rec.Body)
	}
	return rec, body
}

func TestHealthHandlerStaticRoles(t *testing.T) {
	db, _ := unifiedtest.New(t)
	h := unified.HealthHandler(db)

	rec, body := serveHealth(t, h, http.MethodGet, "/healthz")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "ok", body.Status)
	assert.Equal(t, "write", body.Mode)
	assert.True(t, body.Writable)
	assert.True(t, body.Readable)
	require.NotNil(t, body.Primary)
	assert.Equal(t, "primary:5432", *body.Primary)
	require.NotNil(t, body.TopologyAt)
	assert.Equal(t, time.UTC, body.TopologyAt.Location())
	require.NotNil(t, body.TopologyAgeSeconds)
	var names, roles []string
	for _, n := range body.Nodes {
		names, roles = append(names, n.Name), append(roles, n.Role)
		assert.Equal(t, "up", n.State)
		assert.Equal(t, "closed", n.Breaker)
		assert.Equal(t, "0s", n.Lag)
	}
	assert.Equal(t, []string{"primary:5432", "replica0:5432", "replica1:5432"}, names)
	assert.Equal(t, []string{"primary", "replica", "replica"}, roles)

	// The field names are the documented ones, no more, no less.
	var raw map[string]any
	require.NoError(t, json.Unmarshal([]byte(mustGetBody(t, h, "/healthz")), &raw))
	assert.ElementsMatch(t, []string{"status", "mode", "writable", "readable", "primary", "topology_at", "topology_age_seconds", "leaving", "nodes"}, keys(raw))
	node := raw["nodes"].([]any)[0].(map[string]any)
	assert.ElementsMatch(t, []string{"name", "host", "address", "source", "role", "state", "alias_of", "lag_bytes", "lag_seconds", "lag",
		"lag_unknown", "lsn", "rtt_seconds", "rtt", "timeline", "breaker", "last_error", "last_seen", "since"}, keys(node))
	assert.Equal(t, "dsn", node["source"])
	assert.Equal(t, "primary", node["host"])
	assert.NotEmpty(t, node["lsn"], "probed: the WAL position is known")

	rec, body = serveHealth(t, h, http.MethodGet, "/healthz?mode=read")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "read", body.Mode)

	rec, _ = serveHealth(t, h, http.MethodHead, "/healthz")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Zero(t, rec.Body.Len(), "HEAD sends no body")
	assert.NotEmpty(t, rec.Header().Get("Content-Length"))
}

func mustGetBody(t *testing.T, h http.Handler, target string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, target, nil))
	return rec.Body.String()
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func TestHealthHandlerReadsUnavailable(t *testing.T) {
	// No replica and no fallback: writes can be served, reads cannot.
	db, _ := unifiedtest.New(t, unifiedtest.Replicas(0), unifiedtest.Params("unified_read_fallback=error"))
	h := unified.HealthHandler(db)
	rec, body := serveHealth(t, h, http.MethodGet, "/healthz")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.False(t, body.Readable)
	rec, body = serveHealth(t, h, http.MethodGet, "/healthz?mode=read")
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Equal(t, "unavailable", body.Status)
	assert.Equal(t, "read", body.Mode)
}

func TestHealthHandlerClosedDB(t *testing.T) {
	db, _ := unifiedtest.New(t)
	h := unified.HealthHandler(db)
	rec, _ := serveHealth(t, h, http.MethodGet, "/healthz")
	require.Equal(t, http.StatusOK, rec.Code)
	require.NoError(t, db.Close())
	for _, target := range []string{"/healthz", "/healthz?mode=read"} {
		rec, body := serveHealth(t, h, http.MethodGet, target)
		assert.Equal(t, http.StatusServiceUnavailable, rec.Code, target)
		assert.False(t, body.Writable, target)
		assert.False(t, body.Readable, target)
	}
}

func TestHealthHandlerBadRequests(t *testing.T) {
	db, _ := unifiedtest.New(t)
	h := unified.HealthHandler(db)
	rec, body := serveHealth(t, h, http.MethodPost, "/healthz")
	assert.Equal(t, http.StatusMethodNotAllowed, rec.Code)
	assert.Equal(t, "GET, HEAD", rec.Header().Get("Allow"))
	assert.Contains(t, body.Error, "POST")
	rec, body = serveHealth(t, h, http.MethodGet, "/healthz?mode=writes")
	assert.Equal(t, http.StatusBadRequest, rec.Code)
	assert.Contains(t, body.Error, `"writes"`)
}

func TestHealthHandlerNotUnified(t *testing.T) {
	// sql.Open connects to nothing: the password must still not show.
	other, err := sql.Open("pgx", "postgres://app:s3cret@127.0.0.1:1/app")
	require.NoError(t, err)
	defer other.Close()
	for name, db := range map[string]*sql.DB{"pgx": other, "nil": nil} {
		t.Run(name, func(t *testing.T) {
			rec, body := serveHealth(t, unified.HealthHandler(db), http.MethodGet, "/healthz")
			assert.Equal(t, http.StatusInternalServerError, rec.Code)
			assert.Contains(t, body.Error, "unified: HealthHandler: ")
			assert.NotContains(t, rec.Body.String(), "s3cret")
			assert.Empty(t, body.Nodes)
		})
	}
}

func TestHealthHandlerCluster(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	restoreAfter(t, c)
	primary, err := c.Primary(t.Context())
	require.NoError(t, err)
	db := openUnified(t, c, "unified_health_interval=100ms")
	h := unified.HealthHandler(db)

	// The first request waits for the first probe round.
	rec, body := serveHealth(t, h, http.MethodGet, "/healthz")
	require.Equal(t, http.StatusOK, rec.Code, "%s", rec.Body)
	require.NotNil(t, body.Primary)
	assert.Equal(t, c.Node(primary).Addr(), *body.Primary)
	require.Len(t, body.Nodes, 3)
	for i, n := range body.Nodes {
		assert.Equal(t, c.Node(i).Addr(), n.Name)
		want := "replica"
		if i == primary {
			want = "primary"
		}
		assert.Equal(t, want, n.Role, n.Name)
		assert.Equal(t, "up", n.State, n.Name)
		assert.Positive(t, n.Timeline, n.Name)
		assert.Positive(t, n.RTTSeconds, n.Name)
		assert.NotEmpty(t, n.RTT, n.Name)
		assert.Empty(t, n.LastError, n.Name)
		assert.NotNil(t, n.LastSeen, n.Name)
		assert.Equal(t, "closed", n.Breaker, n.Name)
	}

	require.NoError(t, c.Kill(primary))
	waitFor(t, 10*time.Second, func() bool {
		rec, _ := serveHealth(t, h, http.MethodGet, "/healthz")
		return rec.Code == http.StatusServiceUnavailable
	}, "the write endpoint to turn 503 after the primary was killed")
	rec, body = serveHealth(t, h, http.MethodGet, "/healthz")
	assert.Nil(t, body.Primary, "%s", rec.Body)
	assert.False(t, body.Writable)
	assert.Equal(t, "down", body.Nodes[primary].State)
	assert.NotEmpty(t, body.Nodes[primary].LastError)
	rec, body = serveHealth(t, h, http.MethodGet, "/healthz?mode=read")
	assert.Equal(t, http.StatusOK, rec.Code, "%s", rec.Body)
	assert.True(t, body.Readable)
}

// browserAccept is what Chromium and Firefox send for a page.
const browserAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"

// getPage sends one GET with accept and returns the response.
func getPage(t *testing.T, h http.Handler, target, accept string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, target, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	assert.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
	assert.Equal(t, "Accept", rec.Header().Get("Vary"))
	return rec
}

func TestHealthHandlerContentNegotiation(t *testing.T) {
	db, _ := unifiedtest.New(t)
	h := unified.HealthHandler(db)
	for _, tt := range []struct {
		accept string
		html   bool
	}{
		{"", false},
		{"*/*", false},
		{"application/json", false},
		{"application/json, text/html", false}, // a tie keeps JSON
		{"text/html;q=0.5, application/json", false},
		{"text/html, application/json;q=0.9", true},
		{"text/html", true},
		{"TEXT/HTML", true},
		{"text/*", true},
		{"text/html;q=0", false},
		{"text/html;q=bogus", false},
		{browserAccept, true},
		{"image/png", false},
	} {
		t.Run(tt.accept, func(t *testing.T) {
			rec := getPage(t, h, "/healthz", tt.accept)
			assert.Equal(t, http.StatusOK, rec.Code)
			if tt.html {
				assert.Equal(t, "text/html; charset=utf-8", rec.Header().Get("Content-Type"))
				assert.Contains(t, rec.Body.String(), "<!DOCTYPE html>")
			} else {
				assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
				var body healthBody
				assert.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body))
			}
		})
	}
}

func TestHealthHandlerStatusPage(t *testing.T) {
	db, _ := unifiedtest.New(t)
	h := unified.HealthHandler(db)
	rec := getPage(t, h, "/healthz", browserAccept)
	require.Equal(t, http.StatusOK, rec.Code)
	page := rec.Body.String()
	assert.Equal(t, "default-src 'none'; style-src 'unsafe-inline'", rec.Header().Get("Content-Security-Policy"))
	assert.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"))
	assert.Contains(t, page, `<meta http-equiv="refresh" content="2">`)
	assert.Contains(t, page, `<span class="badge ok" id="status">ok</span>`)
	assert.Contains(t, page, "primary: <b>primary:5432</b>")
	assert.NotContains(t, page, "<script", "the page runs no script")
	// One row per node, in DSN order, with its role, state and breaker.
	rows := regexp.MustCompile(`<tr class="node (\w+)"><td class="name (\w+)">([^<]+)</td><td>(\w+)</td><td>(\w+)</td>.*?<td>(closed|half-open|open)</td>`).FindAllStringSubmatch(page, -1)
	require.Len(t, rows, 3, page)
	for i, want := range [][2]string{{"primary:5432", "primary"}, {"replica0:5432", "replica"}, {"replica1:5432", "replica"}} {
		assert.Equal(t, want[0], rows[i][3])
		assert.Equal(t, want[1], rows[i][4])
		assert.Equal(t, "up", rows[i][5])
		assert.Equal(t, "closed", rows[i][6])
	}
	assert.Regexp(t, `<p id="counters">failovers 0, retries 0, commit outcome unknown 0`, page)

	// The mode's question, HEAD, and a closed DB.
	assert.Contains(t, getPage(t, h, "/healthz?mode=read", browserAccept).Body.String(), "Can reads be served?")
	req := httptest.NewRequestWithContext(t.Context(), http.MethodHead, "/healthz", nil)
	req.Header.Set("Accept", "text/html")
	head := httptest.NewRecorder()
	h.ServeHTTP(head, req)
	assert.Equal(t, "text/html; charset=utf-8", head.Header().Get("Content-Type"))
	assert.Zero(t, head.Body.Len())
	require.NoError(t, db.Close())
	rec = getPage(t, h, "/healthz", browserAccept)
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Contains(t, rec.Body.String(), `<span class="badge unavailable" id="status">unavailable</span>`)

	// Errors stay JSON.
	rec = getPage(t, h, "/healthz?mode=nope", browserAccept)
	assert.Equal(t, http.StatusBadRequest, rec.Code)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
}

// failingConnector is a node whose every connection fails with err.
type failingConnector struct{ err error }

func (c failingConnector) Connect(context.Context) (driver.Conn, error) { return nil, c.err }
func (c failingConnector) Driver() driver.Driver                        { return failingDriver{c.err} }

type failingDriver struct{ err error }

func (d failingDriver) Open(string) (driver.Conn, error) { return nil, d.err }

func TestHealthHandlerStatusPageEscapes(t *testing.T) {
	// A probe error carrying markup, from a node whose DSN has a password.
	cfg, err := unified.ParseConfig("host=127.0.0.1 port=1 user=app password=s3cret dbname=app")
	require.NoError(t, err)
	hostile := `<script>alert("x")</script> & <b onclick='y'>`
	db, err := unified.OpenDB(cfg, unified.WithNodeConnector("127.0.0.1:1", failingConnector{errors.New(hostile)}))
	require.NoError(t, err)
	defer db.Close()
	h := unified.HealthHandler(db)

	var page string
	waitFor(t, 5*time.Second, func() bool {
		page = getPage(t, h, "/healthz", "text/html").Body.String()
		return strings.Contains(page, "&lt;script&gt;")
	}, "the probe error on the page")
	assert.NotContains(t, page, "<script")
	assert.NotContains(t, page, "<b onclick")
	assert.Contains(t, page, `&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b onclick=&#39;y&#39;&gt;`)
	assert.NotContains(t, page, "s3cret")
	assert.Contains(t, page, `<span class="badge unavailable" id="status">unavailable</span>`)
}
