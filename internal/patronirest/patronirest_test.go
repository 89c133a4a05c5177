package patronirest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorded is GET /cluster of a Patroni 3.0.2 cluster of this project's
// test setup (internal/patroni), with a scheduled switchover and tags
// added as Patroni writes them.
const recorded = `{"members": [
 {"name": "node0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:41001/patroni", "host": "127.0.0.1", "port": 41000, "timeline": 2},
 {"name": "node1", "role": "sync_standby", "state": "streaming", "api_url": "http://127.0.0.1:41003/patroni", "host": "127.0.0.1", "port": 41002, "timeline": 2, "lag": 0, "tags": {"noloadbalance": true}},
 {"name": "node2", "role": "replica", "state": "running", "api_url": "http://127.0.0.1:41005/patroni", "host": "127.0.0.1", "port": 41004, "timeline": 2, "lag": "unknown", "tags": {"nofailover": "true"}}],
 "scheduled_switchover": {"at": "2026-12-01T21:30:00+00:00", "from": "node0", "to": "node1"}}`

func TestParse(t *testing.T) {
	c, err := Parse([]byte(recorded))
	require.NoError(t, err)
	require.Len(t, c.Members, 3)
	assert.Equal(t, Member{Name: "node0", Role: "leader", State: "running", Host: "127.0.0.1", Port: 41000}, c.Members[0])
	assert.True(t, c.Members[1].NoLoadBalance)
	assert.False(t, c.Members[1].NoFailover)
	assert.True(t, c.Members[2].NoFailover)
	require.NotNil(t, c.Switchover)
	assert.Equal(t, time.Date(2026, 12, 1, 21, 30, 0, 0, time.UTC), c.Switchover.At.UTC())
	assert.Equal(t, "node0", c.Switchover.From)
	assert.Equal(t, "node1", c.Switchover.To)
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"not JSON", `<html>`, "invalid character"},
		{"no name", `{"members": [{"host": "h", "port": 5432}]}`, "without a name"},
		{"port out of range", `{"members": [{"name": "a", "host": "h", "port": 70000}]}`, "out of range"},
		{"port not a number", `{"members": [{"name": "a", "host": "h", "port": true}]}`, "not a number"},
		{"bad switchover time", `{"members": [], "scheduled_switchover": {"at": "tomorrow"}}`, `"tomorrow"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.body))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestParseLenient(t *testing.T) {
	c, err := Parse([]byte(`{"members": [{"name": "a", "port": "5433"}, {"name": "b"}]}`))
	require.NoError(t, err)
	assert.Equal(t, 5433, c.Members[0].Port, "a port as a string")
	assert.Equal(t, Member{Name: "b"}, c.Members[1], "no host, no port")
	assert.Nil(t, c.Switchover)
}

func TestFetch(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cluster" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(recorded))
	}))
	defer srv.Close()
	c, err := Fetch(context.Background(), srv.Client(), srv.URL)
	require.NoError(t, err)
	assert.Len(t, c.Members, 3)
	_, err = Fetch(context.Background(), srv.Client(), srv.URL+"/nope")
	assert.ErrorContains(t, err, "404")
}
