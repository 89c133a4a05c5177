package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Bad flags are a usage error that names the flag and its value, and run
// nothing; good ones give the config the command runs.
func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in the error message; "" for none
	}{
		{[]string{"-trials", "0"}, "-trials must be at least 1"},
		{[]string{"-writers", "0"}, "-writers and -readers must be at least 1"},
		{[]string{"-manager", "stolon"}, `unknown manager "stolon"`},
		{[]string{"-scenarios", "kill,crash"}, `unknown scenario "crash" (want kill, hang)`},
		{[]string{"-manager", "patroni", "-scenarios", "kill"}, `unknown scenario "kill" (want crash, hang, switchover)`},
		{[]string{"-drivers", "unified,lib/pq"}, `unknown driver "lib/pq"`},
		{[]string{"-manager", "patroni", "-timeline", "t.json"}, "-timeline and -saturate run only on the command's own cluster"},
		{[]string{"-manager", "patroni", "-saturate", "10s"}, "-timeline and -saturate run only on the command's own cluster"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"-trials", "2", "-timeline", "t.json", "-saturate", "10s"}, ""},
		{[]string{"-manager", "patroni", "-sync", "-trials", "3"}, ""},
	} {
		var stderr bytes.Buffer
		_, err := parseFlags(tc.args, &stderr)
		if tc.want == "" {
			assert.NoError(t, err, "%q: %s", tc.args, &stderr)
			continue
		}
		assert.Error(t, err, "%q", tc.args)
		assert.Contains(t, stderr.String(), tc.want, "%q", tc.args)
		assert.Contains(t, stderr.String(), "usage: failoverbench", "%q: the usage follows", tc.args)
	}

	cfg, err := parseFlags([]string{"-manager", "patroni"}, &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, "crash,hang,switchover", strings.Join(cfg.scenarios, ","), "every Patroni scenario by default")
	cfg, err = parseFlags([]string{"-unified-params", "unified_health_interval=100ms& unified_retry_max=3&", "-saturate", "5s"}, &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, []string{"unified_health_interval=100ms", "unified_retry_max=3"}, cfg.unifiedParams)
	assert.Equal(t, "kill,hang", strings.Join(cfg.scenarios, ","))
	assert.Equal(t, 5*time.Second, cfg.saturate)
}
