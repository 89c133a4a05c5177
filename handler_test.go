package unified_test

import (
	"database/sql"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
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
	assert.ElementsMatch(t, []string{"status", "mode", "writable", "readable", "primary", "topology_at", "topology_age_seconds", "nodes"}, keys(raw))
	node := raw["nodes"].([]any)[0].(map[string]any)
	assert.ElementsMatch(t, []string{"name", "role", "state", "lag_bytes", "lag_seconds", "lag", "rtt_seconds", "rtt", "timeline", "breaker", "last_error", "last_seen", "since"}, keys(node))

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
