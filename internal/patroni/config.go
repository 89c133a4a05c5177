package patroni

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"time"
)

// scope is the Patroni cluster name (the DCS key prefix /service/unified/).
const scope = "unified"

// nodeLayout is where one node lives; nodeConfig turns it into Patroni's
// configuration.
type nodeLayout struct {
	name      string // "node0"...
	host      string // where PostgreSQL and the REST API listen
	etcdHost  string
	trust     string // a CIDR pg_hba trusts besides 127.0.0.1; "" none
	pgPort    int
	restPort  int
	home      string // owned by the server user: data dir, pgpass, socket
	dataDir   string
	binDir    string
	etcdPort  int
	dcs       DCS
	synchro   bool
	ttl       int // seconds
	loopWait  int
	retryTime int
}

// hba is every node's pg_hba.conf: trust on the loopback and the socket,
// for normal and replication connections.
var hba = []string{
	"local   all          all                 trust",
	"local   replication  all                 trust",
	"host    all          all    127.0.0.1/32 trust",
	"host    replication  all    127.0.0.1/32 trust",
}

// dcsParameters are the PostgreSQL settings Patroni keeps in the DCS
// (bootstrap.dcs.postgresql.parameters), the same on every node. They match
// pgcluster's: fsync=off is fine for tests that kill processes, not the
// machine; synchronous_commit=on and full_page_writes=on keep acknowledged
// commits and pg_rewind working; a standby retries its source every 200 ms
// instead of 5 s.
var dcsParameters = map[string]any{
	"fsync":                        "off",
	"synchronous_commit":           "on",
	"full_page_writes":             "on",
	"wal_log_hints":                "on",
	"wal_retrieve_retry_interval":  "200ms",
	"wal_receiver_status_interval": "1s",
	"hot_standby":                  "on",
	"hot_standby_feedback":         "on",
	"wal_level":                    "replica",
	"wal_keep_size":                "256MB",
	"max_wal_senders":              10,
	"max_replication_slots":        10,
	"max_connections":              100,
}

// nodeConfig returns the Patroni configuration of one node, as JSON (which
// is YAML, the format Patroni reads).
func nodeConfig(l nodeLayout) ([]byte, error) {
	if l.host == "" {
		l.host = "127.0.0.1"
	}
	if l.etcdHost == "" {
		l.etcdHost = "127.0.0.1"
	}
	addr := func(port int) string { return net.JoinHostPort(l.host, strconv.Itoa(port)) }
	hbaLines := hba
	if l.trust != "" {
		hbaLines = append(slices.Clone(hba),
			"host    all          all    "+l.trust+" trust",
			"host    replication  all    "+l.trust+" trust")
	}
	rewind := map[string]any{
		// An old primary or a replica that went past the fork rejoins
		// with pg_rewind; when that fails, or the timelines diverged in
		// a way pg_rewind cannot mend, Patroni removes the data
		// directory and takes a new base backup: a node always rejoins.
		"use_pg_rewind": true,
		"remove_data_directory_on_rewind_failure":     true,
		"remove_data_directory_on_diverged_timelines": true,
	}
	dcsPG := map[string]any{"use_slots": true, "parameters": dcsParameters}
	localPG := map[string]any{
		"listen":          addr(l.pgPort),
		"connect_address": addr(l.pgPort),
		"data_dir":        l.dataDir,
		"bin_dir":         l.binDir,
		"pgpass":          l.home + "/pgpass",
		"authentication": map[string]any{
			// Trust authentication: no passwords.
			"superuser":   map[string]any{"username": "postgres"},
			"replication": map[string]any{"username": "postgres"},
		},
		"parameters": map[string]any{
			"unix_socket_directories": l.home,
			// Dynamic shared memory in files under the data directory,
			// not /dev/shm/PostgreSQL.*, which a crash leaves behind.
			"dynamic_shared_memory_type": "mmap",
			"shared_buffers":             "32MB",
		},
		"pg_hba":     hbaLines,
		"basebackup": map[string]any{"checkpoint": "fast"},
	}
	for k, v := range rewind {
		dcsPG[k] = v
		localPG[k] = v
	}
	cfg := map[string]any{
		"scope": scope,
		"name":  l.name,
		"log":   map[string]any{"level": "INFO"},
		"restapi": map[string]any{
			"listen":          addr(l.restPort),
			"connect_address": addr(l.restPort),
		},
		"bootstrap": map[string]any{
			"dcs": map[string]any{
				"ttl":                     l.ttl,
				"loop_wait":               l.loopWait,
				"retry_timeout":           l.retryTime,
				"maximum_lag_on_failover": 1 << 20,
				"synchronous_mode":        l.synchro,
				"postgresql":              dcsPG,
			},
			"initdb": []any{map[string]any{"encoding": "UTF8"}, map[string]any{"locale": "C"}},
		},
		"postgresql": localPG,
		"watchdog":   map[string]any{"mode": "off"},
		"tags":       map[string]any{},
	}
	switch l.dcs {
	case EtcdV2:
		cfg["etcd"] = map[string]any{"host": net.JoinHostPort(l.etcdHost, strconv.Itoa(l.etcdPort))}
	case EtcdV3:
		cfg["etcd3"] = map[string]any{"host": net.JoinHostPort(l.etcdHost, strconv.Itoa(l.etcdPort))}
	default:
		return nil, fmt.Errorf("patroni: unknown DCS %d", l.dcs)
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// seconds converts a duration to the whole seconds Patroni takes, rounding
// up; zero or less gives def.
func seconds(d time.Duration, def int) int {
	if d <= 0 {
		return def
	}
	return int(math.Ceil(d.Seconds()))
}
