// Package pgtest starts a real local PostgreSQL cluster, a primary and
// streaming replicas, for the tests of code that must survive a failover,
// and breaks it on demand: crash, hang, promotion, failover, rejoin, replay
// paused.
//
//	func TestCheckoutSurvivesFailover(t *testing.T) {
//		c := pgtest.Start(t, pgtest.Synchronous())
//		db, err := sql.Open("unified", c.DSN()+"&unified_health_interval=100ms")
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer db.Close()
//		// ... start the service under test on db, send it traffic ...
//		c.Kill(c.Primary())
//		if _, err := c.FailOver(); err != nil {
//			t.Fatal(err)
//		}
//		// ... check the service's writes resumed and none acknowledged was lost ...
//	}
//
// # What Start starts, and where
//
// [Start] finds the PostgreSQL server binaries ($UNIFIED_PG_BIN, else
// `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin), creates
// a temporary directory (in /dev/shm when it is a roomy tmpfs, else
// os.TempDir()), runs initdb for node 0 and starts it as the primary, then
// copies it with pg_basebackup into nodes 1..n, started as standbys
// streaming from it (application_name "node1", ...). Every node listens on
// a free port of 127.0.0.1 only; no Unix socket. Authentication is trust:
// user postgres, no password, database postgres, no TLS ([Cluster.DSN],
// [Node.DSN]).
//
// Settings are for tests: fsync=off (a killed process loses nothing; a
// crash of the machine would lose data, which a test does not care about),
// but synchronous_commit=on and full_page_writes=on, so an acknowledged
// commit survives a Kill and pg_rewind works; wal_retrieve_retry_interval
// is 200 ms so a standby finds a new primary quickly. [Conf] adds settings.
//
// When the test runs as root (as in a container), the servers run as the
// "postgres" user, which must exist (PostgreSQL refuses to run as root);
// the data directories are owned by it. Otherwise they run as the current
// user.
//
// Each postmaster is started directly, not through pg_ctl, in a process
// group of its own, and gets SIGKILL if the test process dies (Linux
// PR_SET_PDEATHSIG), so a test that panics or is killed leaves no server
// running; the next Start removes directories left behind by dead
// processes. [Cluster.Close], registered with tb.Cleanup, stops every node
// and removes the directory. When the test failed, the last lines of each
// server's log are logged first ([ServerLogs]).
//
// # What each fault does
//
//   - [Cluster.Kill]: SIGKILL to the postmaster, as a crash. Its backends
//     notice the dead postmaster only when they next wait, so for 10 to 100
//     ms they may still answer, and acknowledge commits that an
//     asynchronous replica never receives: [Synchronous] prevents that loss.
//   - [Cluster.Hang]: SIGSTOP to the postmaster and every server process.
//     The kernel still completes TCP handshakes and buffers what clients
//     send; nothing answers. Only a timeout notices. [Cluster.Resume] sends
//     SIGCONT.
//   - [Cluster.Promote]: pg_promote() on a replica, then pg_is_in_recovery()
//     polled every 2 ms on the same connection; it returns when the node
//     accepts writes ([Node.PromotedAt]). The new primary is on a new
//     timeline.
//   - [Cluster.FailOver]: what a failover manager such as Patroni does after
//     the primary is lost: promote the replica that received the most WAL,
//     re-point the others (ALTER SYSTEM SET primary_conninfo and a reload),
//     rewind one that replayed past the new timeline's fork point, keep the
//     cluster synchronous.
//   - [Cluster.Rejoin]: a fast shutdown of the node, pg_rewind against the
//     current primary (pg_basebackup if that fails), standby.signal, start,
//     wait until it streams. Writes only the old node had are gone.
//   - [Cluster.PauseReplay] / [Cluster.ResumeReplay]: pg_wal_replay_pause()
//     and pg_wal_replay_resume(): the replica receives WAL but its data
//     stops moving, so its lag grows while the primary writes.
//
// The Cluster remembers which node is the primary ([Cluster.Primary]):
// node 0, then the node of the last Promote or FailOver.
//
// # Cost
//
// Measured on this project's two-core machine (PostgreSQL 15): Start takes
// one to two seconds for a primary and two replicas; each node holds about
// 100 MB in the temporary directory (mostly WAL; in /dev/shm that is
// memory) and its processes some 30 to 60 MB besides (shared_buffers is
// 32MB). Kill, Hang and Resume take milliseconds, Promote tens of
// milliseconds, FailOver 100 to 300 ms (seconds when a replica has to be
// rewound), Rejoin from under a second on an idle cluster to several
// seconds under write load. Share one cluster between the tests of a
// package that do not break it; give the ones that break it their own.
//
// # Errors, skipping, concurrency
//
// Methods are for tests: they report a failure with tb.Fatalf, so call
// them from the test's goroutine. [Cluster.FailOver] returns its error
// instead. Without the server binaries, or when the cluster does not
// start, Start fails the test with the reason, which says what to install
// (Debian: apt-get install postgresql); with $UNIFIED_TEST_CLUSTER=skip it
// skips the test instead, and "require" fails it too. A run that could not
// start the cluster does not look like a pass.
//
// A Cluster's methods are safe for concurrent use, but faulting one node
// from two goroutines at once gives whatever order the signals arrive in.
// Clusters are independent of each other: parallel tests may each Start
// their own (each costs the above).
//
// Outside a test (a demo, a tool), [Run] gives f a testing.TB of its own
// whose failures end f, run the Cleanup functions and make the exit status
// 1, and whose Context is cancelled by Ctrl-C.
//
// # Patroni
//
// Start's cluster is managed by this package itself, as a failover manager
// would, so that a test decides when each step happens. [StartPatroni]
// starts the other kind: a real Patroni cluster (etcd and three Patroni
// nodes) that makes its own failovers; the test crashes, hangs or
// switches over a node and waits for Patroni's new leader
// ([PatroniCluster.WaitLeaderWritable]).
package pgtest
