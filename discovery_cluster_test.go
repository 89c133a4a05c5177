package unified_test

// Topology that changes under the driver (issue: DNS re-resolution,
// Patroni as a member source, promotion seen at once, rotating
// credentials, trust), on the real cluster.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/faultproxy"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// fakeDNS is a resolver the test controls.
type fakeDNS struct {
	mu    sync.Mutex
	addrs map[string][]string
	fail  bool
}

func (d *fakeDNS) set(host string, addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs[host] = addrs
}

func (d *fakeDNS) lookup(_ context.Context, host string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail {
		return nil, &net.DNSError{Err: "server misbehaving", Name: host, IsTemporary: true}
	}
	if a, ok := d.addrs[host]; ok {
		return append([]string(nil), a...), nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// readLoad runs ReadOnly reads and writes until stop, counting failures.
func readLoad(t *testing.T, db *sql.DB, table string) (stop func() (reads, failed int64)) {
	t.Helper()
	var halt atomic.Bool
	var reads, failed atomic.Int64
	var wg sync.WaitGroup
	ro := unified.WithMode(context.Background(), unified.ReadOnly)
	for range 4 {
		wg.Go(func() {
			for !halt.Load() {
				var one int
				if err := db.QueryRowContext(ro, "SELECT 1").Scan(&one); err != nil {
					failed.Add(1)
					t.Log("read:", err)
				}
				reads.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	wg.Go(func() {
		for i := 0; !halt.Load(); i++ {
			if _, err := db.ExecContext(context.Background(), "INSERT INTO "+table+" VALUES ($1)", i); err != nil {
				failed.Add(1)
				t.Log("write:", err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return func() (int64, int64) {
		halt.Store(true)
		wg.Wait()
		return reads.Load(), failed.Load()
	}
}

// DNS re-resolution: an address added to a name becomes a node (probed
// before it gets traffic), a vanished one is drained and removed, while
// traffic runs and nothing fails; a name that fails to resolve keeps its
// last addresses.
func TestDNSRefreshAddsAndDrainsNodes(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	ctx := t.Context()
	const table = "dns_refresh"
	newTable(t, c, table)
	primary, err := c.Primary(ctx)
	require.NoError(t, err)
	reps := c.Others(primary)
	port := c.Node(primary).Port
	for k, r := range reps { // the replicas at 127.0.0.2 and 127.0.0.3, on the primary's port
		px, err := faultproxy.NewOn(net.JoinHostPort(fmt.Sprintf("127.0.0.%d", 2+k), strconv.Itoa(port)), c.Node(r).Addr())
		require.NoError(t, err)
		defer px.Close()
	}
	dns := &fakeDNS{addrs: map[string][]string{}}
	dns.set("pool.test", "127.0.0.1", "127.0.0.2")
	cfg, err := unified.ParseConfig(fmt.Sprintf("postgres://postgres@pool.test:%d/postgres?sslmode=disable&unified_dns_refresh=1s&unified_health_interval=100ms", port))
	require.NoError(t, err)
	db, err := unified.OpenDB(cfg, unified.WithLookupFunc(dns.lookup))
	require.NoError(t, err)
	defer db.Close()
	conn, _ := unified.ConnectorOf(db)
	names := func() []string {
		var out []string
		for _, n := range conn.Health(ctx).Nodes {
			if n.State != "down" {
				out = append(out, n.Name+"="+n.Role)
			}
		}
		return out
	}
	node := func(a string) string { return fmt.Sprintf("pool.test/%s:%d", a, port) }
	require.ElementsMatch(t, []string{node("127.0.0.1") + "=primary", node("127.0.0.2") + "=replica"}, names())
	for _, n := range conn.Health(ctx).Nodes {
		assert.Equal(t, "dns", n.Source)
	}

	stop := readLoad(t, db, table)
	dns.set("pool.test", "127.0.0.1", "127.0.0.2", "127.0.0.3")
	waitFor(t, 10*time.Second, func() bool { return len(names()) == 3 }, "the new address to become a node")
	dns.set("pool.test", "127.0.0.1", "127.0.0.3")
	waitFor(t, 10*time.Second, func() bool {
		for _, n := range conn.Health(ctx).Nodes {
			if n.Name == node("127.0.0.2") {
				return false
			}
		}
		return true
	}, "the vanished address to be drained and removed")
	dns.mu.Lock()
	dns.fail = true
	dns.mu.Unlock()
	errsBefore := conn.Stats().DiscoveryErrors
	waitFor(t, 10*time.Second, func() bool { return conn.Stats().DiscoveryErrors > errsBefore }, "a failed lookup to be counted")
	assert.ElementsMatch(t, []string{node("127.0.0.1") + "=primary", node("127.0.0.3") + "=replica"}, names(), "the last addresses are kept")
	reads, failed := stop()
	t.Logf("%d reads and the writes while nodes came and went: %d failures", reads, failed)
	assert.Zero(t, failed, "nothing failed")
	assert.Positive(t, reads)
}

// patroniFake serves GET /cluster with the members the test sets.
type patroniFake struct {
	mu   sync.Mutex
	body map[string]any
}

func (p *patroniFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/cluster" {
		http.NotFound(w, r)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = json.NewEncoder(w).Encode(p.body)
}

func (p *patroniFake) set(body map[string]any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.body = body
}

func patroniMember(name string, n *pgcluster.Node, role string, tags map[string]any) map[string]any {
	m := map[string]any{"name": name, "role": role, "state": "running", "host": n.Host, "port": n.Port, "api_url": "http://x/patroni"}
	if tags != nil {
		m["tags"] = tags
	}
	return m
}

// Patroni as a member source: the DSN names one host, /cluster the others;
// a noloadbalance member gets no reads; a scheduled switchover makes writes
// wait for the new leader instead of going to the old one.
func TestPatroniMembersJoinTheDSN(t *testing.T) {
	const table = "patroni_members"
	c, primary := faultable(t, table)
	ctx := t.Context()
	reps := c.Others(primary)
	fake := &patroniFake{}
	fake.set(map[string]any{"members": []any{
		patroniMember("node0", c.Node(primary), "leader", nil),
		patroniMember("node1", c.Node(reps[0]), "replica", nil),
		patroniMember("node2", c.Node(reps[1]), "replica", map[string]any{"noloadbalance": true}),
	}})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	db := openUnifiedDSN(t, c.Node(primary).DSN()+"&unified_health_interval=100ms&unified_patroni="+srv.URL)
	conn, _ := unified.ConnectorOf(db)
	h := conn.Health(ctx)
	require.Len(t, h.Nodes, 3, "%+v", h.Nodes)
	sources := map[string]string{}
	for _, n := range h.Nodes {
		sources[n.Name] = n.Source
	}
	assert.Equal(t, "dsn", sources[c.Node(primary).Addr()])
	assert.Equal(t, "patroni", sources[c.Node(reps[0]).Addr()])
	assert.Equal(t, "patroni", sources[c.Node(reps[1]).Addr()])

	db.SetMaxIdleConns(0)
	ro := unified.WithMode(ctx, unified.ReadOnly)
	onTagged := 0
	for range 30 {
		if serverPort(t, ro, db) == c.Node(reps[1]).Port {
			onTagged++
		}
	}
	assert.Zero(t, onTagged, "the noloadbalance member gets no reads")

	// A switchover scheduled for now: writes wait for the new leader.
	fake.set(map[string]any{
		"members": []any{
			patroniMember("node0", c.Node(primary), "leader", nil),
			patroniMember("node1", c.Node(reps[0]), "replica", nil),
			patroniMember("node2", c.Node(reps[1]), "replica", nil),
		},
		"scheduled_switchover": map[string]any{"at": time.Now().Add(time.Second).Format(time.RFC3339Nano), "from": "node0", "to": "node1"},
	})
	waitFor(t, 10*time.Second, func() bool { return conn.Health(ctx).Leaving == c.Node(primary).Addr() },
		"the scheduled switchover to be seen")
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := db.ExecContext(wctx, "INSERT INTO "+table+" VALUES (-1)")
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "writes wait while the switchover is due")
	done := make(chan error, 1)
	go func() {
		_, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)")
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	assert.Zero(t, countOn(t, c, primary, "SELECT count(*) FROM "+table+" WHERE id = 1"), "the write did not go to the leaving leader")
	require.NoError(t, c.Stop(primary, "fast"))
	cur, _ := failOver(t, c, primary)
	require.NoError(t, <-done, "the write went out on the new leader")
	assert.Equal(t, 1, countOn(t, c, cur, "SELECT count(*) FROM "+table+" WHERE id = 1"))
}

func openUnifiedDSN(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("unified", dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// A promotion is seen on a read connection's next reply (in_hot_standby
// goes off), long before the next health probe.
func TestPromotionSeenOnTheNextReply(t *testing.T) {
	c, primary := faultable(t, "")
	ctx := t.Context()
	target := c.Others(primary)[0]
	// Only the promoted replica serves reads, so the reads are on it.
	var hosts []string
	for _, i := range []int{primary, target} {
		hosts = append(hosts, c.Node(i).Addr())
	}
	db := openUnifiedDSN(t, "postgres://postgres@"+strings.Join(hosts, ",")+"/postgres?sslmode=disable&unified_health_interval=30s")
	conn, _ := unified.ConnectorOf(db)
	ro := unified.WithMode(ctx, unified.ReadOnly)
	require.Equal(t, c.Node(target).Port, serverPort(t, ro, db))
	require.NoError(t, c.Stop(primary, "fast")) // the old primary leaves; a probe would take 30 s to notice
	_, err := c.Promote(ctx, target)
	require.NoError(t, err)
	start := time.Now()
	waitFor(t, 10*time.Second, func() bool {
		var one int
		_ = db.QueryRowContext(ro, "SELECT 1").Scan(&one) // a reply carries the ParameterStatus
		return conn.Health(ctx).Primary == c.Node(target).Addr()
	}, "the promotion to be seen")
	t.Logf("promotion seen %v after it, with a 30 s health interval", time.Since(start).Round(time.Millisecond))
	_, err = db.ExecContext(ctx, "SELECT txid_current()")
	require.NoError(t, err, "writes go to the promoted node")
}

// Rotating credentials: WithBeforeConnect sets the password of every new
// connection; a failing hook fails the dial with its error, never counts
// against the breaker, and never prints the secret.
func TestBeforeConnectRotatesCredentials(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	restoreAfter(t, c)
	ctx := t.Context()
	require.NoError(t, c.Exec(ctx, 0, "DROP ROLE IF EXISTS rotating; CREATE ROLE rotating LOGIN PASSWORD 'first-secret-1'"))
	hba := append([]string{"host all rotating 127.0.0.1/32 scram-sha-256"}, pgcluster.DefaultHBA...)
	for i := 0; i < c.Len(); i++ {
		require.NoError(t, c.WriteHBA(ctx, i, hba))
	}
	var (
		mu       sync.Mutex
		password = "first-secret-1"
		hookErr  error
	)
	hook := func(_ context.Context, cfg *pgx.ConnConfig) error {
		mu.Lock()
		defer mu.Unlock()
		if hookErr != nil {
			return hookErr
		}
		cfg.Password = password
		return nil
	}
	cfg, err := unified.ParseConfig(strings.Replace(c.DSN(), "postgres://postgres@", "postgres://rotating@", 1) + "&unified_breaker_failures=2&unified_failover_timeout=500ms")
	require.NoError(t, err)
	db, err := unified.OpenDB(cfg, unified.WithBeforeConnect(hook))
	require.NoError(t, err)
	defer db.Close()
	db.SetMaxIdleConns(0) // every statement dials
	_, err = db.ExecContext(ctx, "SELECT 1")
	require.NoError(t, err, "the hook's password works")

	require.NoError(t, c.Exec(ctx, 0, "ALTER ROLE rotating PASSWORD 'second-secret-2'"))
	mu.Lock()
	password = "second-secret-2"
	mu.Unlock()
	for range 3 {
		_, err = db.ExecContext(ctx, "SELECT 1")
		require.NoError(t, err, "the rotated password works without reopening the DB")
	}

	mu.Lock()
	hookErr = fmt.Errorf("vault: lease expired for token second-secret-2")
	mu.Unlock()
	for range 4 {
		_, err = db.ExecContext(ctx, "SELECT 1")
		require.Error(t, err)
		assert.ErrorContains(t, err, "lease expired")
		assert.NotContains(t, err.Error(), "second-secret-2", "no secret in the error")
		assert.NotErrorIs(t, err, unified.ErrNoPrimary, "the caller's configuration failed, not the node: no wait for a failover")
	}
	mu.Lock()
	hookErr = fmt.Errorf("token endpoint: %w", unified.ErrNodeFault)
	mu.Unlock()
	_, err = db.ExecContext(ctx, "SELECT 1")
	assert.ErrorIs(t, err, unified.ErrNoPrimary, "a hook that says the node failed is a node fault: the write waited for a failover")
	mu.Lock()
	hookErr = nil
	mu.Unlock()
	_, err = db.ExecContext(ctx, "SELECT 1")
	require.NoError(t, err)
}

// Trust: a member a forged /cluster announces is trusted no more than a
// DSN host: with sslmode=verify-full a server whose certificate does not
// verify fails before it is probed, and is never a candidate.
func TestForgedMemberWithoutCertificateIsNeverProbed(t *testing.T) {
	dir := t.TempDir()
	caPEM, forged := testCertificates(t)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.pem"), caPEM, 0o600))
	// A "PostgreSQL" server that accepts TLS with a certificate our CA did
	// not sign, and would answer anything after it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var handshakes, probes atomic.Int64
	go func() {
		for {
			cn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer cn.Close()
				buf := make([]byte, 8)
				if _, err := io.ReadFull(cn, buf); err != nil {
					return
				}
				_, _ = cn.Write([]byte("S"))
				tc := tls.Server(cn, &tls.Config{Certificates: []tls.Certificate{forged}})
				if tc.Handshake() != nil {
					return
				}
				handshakes.Add(1)
				if n, _ := tc.Read(make([]byte, 64)); n > 0 {
					probes.Add(1) // a startup message reached the forged server
				}
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	fake := &patroniFake{}
	fake.set(map[string]any{"members": []any{map[string]any{"name": "evil", "role": "leader", "host": "127.0.0.1", "port": mustAtoi(t, port)}}}) // an IP: the name check fails
	srv := httptest.NewServer(fake)
	defer srv.Close()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := closed.Addr().String()
	closed.Close()
	db := openUnifiedDSN(t, fmt.Sprintf("postgres://app@%s/app?sslmode=verify-full&sslrootcert=%s&unified_failover_timeout=1s&unified_patroni=%s",
		deadAddr, filepath.Join(dir, "ca.pem"), srv.URL))
	_, err = db.ExecContext(t.Context(), "SELECT 1")
	require.ErrorIs(t, err, unified.ErrNoPrimary)
	conn, _ := unified.ConnectorOf(db)
	evil, ok := healthOf(conn.Health(t.Context()), "127.0.0.1:"+port)
	require.True(t, ok, "the forged member is a node")
	assert.Equal(t, "patroni", evil.Source)
	assert.Equal(t, "down", evil.State)
	assert.Contains(t, evil.LastError, "certificate", "it failed TLS verification")
	assert.Zero(t, probes.Load(), "no startup message, no probe reached it")
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}

// testCertificates returns a CA certificate (PEM) and a server certificate
// for "db.example" signed by another, unknown CA.
func testCertificates(t *testing.T) ([]byte, tls.Certificate) {
	t.Helper()
	mk := func(cn string, isCA bool, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		tpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: isCA, BasicConstraintsValid: true,
			DNSNames: []string{cn}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
		if parent == nil {
			parent, parentKey = tpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tpl, parent, &key.PublicKey, parentKey)
		require.NoError(t, err)
		cert, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		return cert, key, der
	}
	_, _, caDER := mk("unified test CA", true, nil, nil)
	otherCA, otherKey, _ := mk("someone else's CA", true, nil, nil)
	_, srvKey, srvDER := mk("db.example", false, otherCA, otherKey)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
}
