package main

import (
	"bytes"
	"context"
	"image/png"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// findChromium returns Debian's chromium, or skips the test without it
// (fails it when UNIFIED_TEST_CLUSTER=require, as .ci/run sets: CI
// installs it).
func findChromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "headless Chromium not found: on Debian apt-get install chromium"
	if os.Getenv("UNIFIED_TEST_CLUSTER") == "require" {
		t.Fatal(msg + " (UNIFIED_TEST_CLUSTER=require)")
	}
	t.Skip(msg)
	return ""
}

// chromium runs headless Chromium on url with args (--dump-dom,
// --screenshot=...), in a profile of its own, and returns its stdout.
func chromium(t *testing.T, bin, url string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	all := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--user-data-dir=" + t.TempDir(),
	}, args...)
	cmd := exec.CommandContext(ctx, bin, append(all, url)...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Dir = t.TempDir()
	require.NoError(t, cmd.Run(), "chromium %v:\n%s", args, stderr.String())
	return stdout.String()
}

// nodeRow is a row of the page's node table: class (state), name, role,
// state.
var nodeRow = regexp.MustCompile(`<tr class="node (\w+)"><td class="name \w+">([^<]+)</td><td>(\w+)</td><td>(\w+)</td>`)

// TestStatusPageInChromium loads HealthHandler's page from an httptest
// server over a live cluster in headless Chromium: the DOM it rendered has
// a row per node with the right roles, a screenshot is a real picture, and
// after the primary is killed the page shows it down.
func TestStatusPageInChromium(t *testing.T) {
	bin := findChromium(t)
	var out bytes.Buffer
	cl, db := start(t, &out)
	srv := httptest.NewServer(unified.HealthHandler(db))
	defer srv.Close()
	stop := traffic(t.Context(), db)
	defer stop()

	began := time.Now()
	dom := chromium(t, bin, srv.URL, "--dump-dom")
	t.Logf("chromium --dump-dom took %v", time.Since(began).Round(time.Millisecond))
	rows := nodeRow.FindAllStringSubmatch(dom, -1)
	require.Len(t, rows, cl.Len(), "the node table, one row per node:\n%s", dom)
	for i, r := range rows {
		assert.Equal(t, cl.Node(i).Addr(), r[2])
		want := "replica"
		if i == cl.Primary() {
			want = "primary"
		}
		assert.Equal(t, want, r[3], r[2])
		assert.Equal(t, "up", r[4], r[2])
	}
	assert.Contains(t, dom, `id="status">ok</span>`)
	assert.Contains(t, dom, "primary: <b>"+cl.Node(cl.Primary()).Addr()+"</b>")

	shot := filepath.Join(t.TempDir(), "status.png")
	chromium(t, bin, srv.URL, "--screenshot="+shot, "--window-size=1280,600", "--hide-scrollbars")
	f, err := os.Open(shot)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err, "the screenshot is a PNG")
	assert.Equal(t, 1280, img.Bounds().Dx())
	colors := map[uint32]bool{}
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y += 3 {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x += 3 {
			r, g, b, _ := img.At(x, y).RGBA()
			colors[r>>8<<16|g>>8<<8|b>>8] = true
		}
	}
	assert.Greater(t, len(colors), 20, "the screenshot shows a rendered page, not a blank one")
	if dst := os.Getenv("UNIFIED_STATUS_SCREENSHOT"); dst != "" {
		b, err := os.ReadFile(shot)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(dst, b, 0o644))
	}

	// The page follows the cluster: the killed primary shows down.
	killed := cl.Primary()
	cl.Kill(killed)
	c, _ := unified.ConnectorOf(db)
	require.Eventually(t, func() bool { return c.Stats().Health.Nodes[killed].State == "down" }, 10*time.Second, 10*time.Millisecond)
	dom = chromium(t, bin, srv.URL, "--dump-dom")
	rows = nodeRow.FindAllStringSubmatch(dom, -1)
	require.Len(t, rows, cl.Len(), dom)
	assert.Equal(t, "down", rows[killed][1], "row class")
	assert.Equal(t, "down", rows[killed][4], "state cell")
	assert.Contains(t, dom, `id="status">unavailable</span>`, "no primary: writes cannot be served")
	assert.True(t, strings.Contains(dom, "became down"), "the timeline shows the change")
}
