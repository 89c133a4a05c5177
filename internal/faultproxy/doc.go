// Package faultproxy is a TCP proxy on a loopback port in front of one
// PostgreSQL node, with faults a test switches on and off while connections
// are in flight: latency, a hung host, refused connections, resets, graceful
// closes, and a connection cut right after a COMMIT was sent.
//
// It uses only the standard library and is meant for tests and demos, never
// for production traffic.
//
// # Use
//
//	p, err := faultproxy.New("127.0.0.1:5432")
//	// handle err
//	defer p.Close()
//	dsn := fmt.Sprintf("postgres://app@%s/app?sslmode=disable", p.Addr())
//	...
//	p.CutAfterCommit()
//	err = tx.Commit() // the COMMIT runs on the server, the client loses the connection
//	// p.Cuts() == 1
//
// # Faults
//
// Every client connection gets its own connection to the target, and two
// loops copy bytes, one per direction, in order and never reordered.
//
//   - [Proxy.Pass]: normal forwarding; clears the latency and an armed cut.
//   - [Proxy.SetLatency]: each chunk is held before it is written, in both
//     directions, on existing and new connections.
//   - [Proxy.Blackhole]: a hung host. Existing and new connections stay open,
//     everything is read and dropped, nothing is answered. Blackholed
//     connections never come back, not even after Pass; new connections
//     after Pass work.
//   - [Proxy.Refuse]: new connections are closed right after accept;
//     existing ones carry on.
//   - [Proxy.ResetAll], [Proxy.CloseAll]: abort (RST) or close (FIN) the
//     connections open now, on both sides; new ones are still accepted.
//   - [Proxy.CutAfterCommit], [Proxy.CutAfter]: a one-shot cut after the
//     first matching statement has been forwarded, before any reply reaches
//     the client. The client sees the drop only after the server has run the
//     statement and closed its side, so a test can check the outcome at
//     once; [Proxy.Cuts] counts cuts.
//
// # Protocol awareness
//
// To find statements the proxy follows the framing of the PostgreSQL v3
// frontend protocol on the client→server stream: the untyped startup packet
// (and SSLRequest / GSSENCRequest, whose one-byte answer the proxy notes on
// its way back), then typed messages. Unarmed, that costs a look at five
// header bytes a message; message bodies are copied only while a cut is
// armed. Once TLS or GSS encryption is negotiated the stream is opaque and no
// cut can happen on that connection, so connect with sslmode=disable (or to
// a server without TLS) when a test cuts.
//
// # Concurrency
//
// All methods of [Proxy] are safe for concurrent use. Mode changes affect
// connections accepted afterwards; Blackhole and SetLatency also reach the
// connections already open. [Proxy.Close] returns only when every goroutine
// of the proxy has ended.
package faultproxy
