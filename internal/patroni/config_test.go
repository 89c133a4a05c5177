package patroni

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNodeConfig(t *testing.T) {
	base := nodeLayout{name: "node1", pgPort: 5001, restPort: 8001, home: "/x/node1", dataDir: "/x/node1/data",
		binDir: "/pg/bin", etcdPort: 2379, dcs: EtcdV2, ttl: 20, loopWait: 1, retryTime: 3}
	for _, tc := range []struct {
		name    string
		edit    func(*nodeLayout)
		section string // etcd client section present
		absent  string
		sync    bool
	}{
		{"etcd v2", func(*nodeLayout) {}, "etcd", "etcd3", false},
		{"etcd v3", func(l *nodeLayout) { l.dcs = EtcdV3 }, "etcd3", "etcd", false},
		{"synchronous", func(l *nodeLayout) { l.synchro = true }, "etcd", "etcd3", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := base
			tc.edit(&l)
			b, err := nodeConfig(l)
			require.NoError(t, err)
			var cfg map[string]any
			require.NoError(t, json.Unmarshal(b, &cfg))
			assert.Equal(t, map[string]any{"host": "127.0.0.1:2379"}, cfg[tc.section])
			assert.NotContains(t, cfg, tc.absent)
			assert.Equal(t, "node1", cfg["name"])
			assert.Equal(t, "127.0.0.1:8001", cfg["restapi"].(map[string]any)["listen"])
			dcs := cfg["bootstrap"].(map[string]any)["dcs"].(map[string]any)
			assert.EqualValues(t, 20, dcs["ttl"])
			assert.EqualValues(t, 1, dcs["loop_wait"])
			assert.EqualValues(t, 3, dcs["retry_timeout"])
			assert.Equal(t, tc.sync, dcs["synchronous_mode"])
			dpg := dcs["postgresql"].(map[string]any)
			assert.Equal(t, true, dpg["use_pg_rewind"])
			params := dpg["parameters"].(map[string]any)
			for k, v := range map[string]string{"fsync": "off", "synchronous_commit": "on", "full_page_writes": "on",
				"wal_log_hints": "on", "wal_retrieve_retry_interval": "200ms", "hot_standby": "on"} {
				assert.Equal(t, v, params[k], k)
			}
			pg := cfg["postgresql"].(map[string]any)
			assert.Equal(t, "127.0.0.1:5001", pg["listen"])
			assert.Equal(t, "127.0.0.1:5001", pg["connect_address"])
			assert.Equal(t, "/x/node1/data", pg["data_dir"])
			assert.Equal(t, "/pg/bin", pg["bin_dir"])
			assert.Equal(t, true, pg["remove_data_directory_on_rewind_failure"])
			assert.Equal(t, true, pg["remove_data_directory_on_diverged_timelines"])
			assert.Equal(t, "/x/node1", pg["parameters"].(map[string]any)["unix_socket_directories"])
		})
	}
	_, err := nodeConfig(nodeLayout{dcs: DCS(9)})
	assert.Error(t, err)
}

func TestSeconds(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{
		{0, 20}, {-time.Second, 20}, {time.Second, 1}, {1500 * time.Millisecond, 2}, {30 * time.Second, 30},
	} {
		assert.Equal(t, tc.want, seconds(tc.d, 20), tc.d)
	}
}

func TestDCSString(t *testing.T) {
	assert.Equal(t, "etcd", DCS(0).String())
	assert.Equal(t, "etcd", EtcdV2.String())
	assert.Equal(t, "etcd3", EtcdV3.String())
	assert.Equal(t, "DCS(7)", DCS(7).String())
}
