package faultproxy

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Hand-built frontend protocol messages.

func be32(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
func be16(n uint16) []byte { return binary.BigEndian.AppendUint16(nil, n) }
func cz(s string) []byte   { return append([]byte(s), 0) }

func untyped(code uint32, body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	return bytes.Join([][]byte{be32(uint32(8 + len(b))), be32(code), b}, nil)
}

func typed(typ byte, body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	return bytes.Join([][]byte{{typ}, be32(uint32(4 + len(b))), b}, nil)
}

func sslRequest() []byte    { return untyped(codeSSLRequest) }
func gssencRequest() []byte { return untyped(codeGSSENCRequest) }
func startup() []byte {
	return untyped(3<<16, cz("user"), cz("app"), cz("database"), cz("app"), []byte{0})
}
func query(q string) []byte { return typed('Q', cz(q)) }
func parse(name, q string) []byte {
	return typed('P', cz(name), cz(q), be16(1), be32(23))
}
func bind(portal, stmt string) []byte {
	// one text parameter "42", no result formats
	return typed('B', cz(portal), cz(stmt), be16(0), be16(1), be32(2), []byte("42"), be16(0))
}
func describe(kind byte, name string) []byte { return typed('D', []byte{kind}, cz(name)) }
func execute(portal string) []byte           { return typed('E', cz(portal), be32(0)) }
func syncMsg() []byte                        { return typed('S') }
func closeStmt(name string) []byte           { return typed('C', []byte{'S'}, cz(name)) }
func terminate() []byte                      { return typed('X') }

// seg is a piece of a client stream and the event expected right after it.
type seg struct {
	b    []byte
	want event
}

type hit struct {
	ev  event
	off int
}

// stream concatenates segs and lists the events they expect.
func stream(segs []seg) ([]byte, []hit) {
	var all []byte
	var want []hit
	for _, s := range segs {
		all = append(all, s.b...)
		if s.want != eventNone {
			want = append(want, hit{s.want, len(all)})
		}
	}
	return all, want
}

// collect feeds chunks to a fresh scanner as the proxy does, answering every
// negotiation with answer, and returns the events at absolute offsets.
func collect(chunks [][]byte, req *cutRequest, answer byte) []hit {
	f := newFrontend()
	var hits []hit
	base := 0
	for _, c := range chunks {
		for len(c) > 0 {
			n, ev := f.scan(c, req)
			base += n
			c = c[n:]
			switch ev {
			case eventNegotiate:
				hits = append(hits, hit{ev, base})
				f.answer(answer)
			case eventCut:
				hits = append(hits, hit{ev, base})
			}
		}
	}
	return hits
}

// splits returns the ways the tests cut a stream into reads: whole, in two
// at every offset, and one byte at a time.
func splits(b []byte) map[string][][]byte {
	out := map[string][][]byte{"whole": {b}}
	for k := 1; k < len(b); k++ {
		out["at "+strconv.Itoa(k)] = [][]byte{b[:k], b[k:]}
	}
	bytewise := make([][]byte, len(b))
	for i := range b {
		bytewise[i] = b[i : i+1]
	}
	out["bytewise"] = bytewise
	return out
}

func armed(match func(string) bool) *cutRequest { return &cutRequest{match: match} }

func isInsert(q string) bool { return strings.HasPrefix(strings.TrimSpace(q), "insert") }

func TestFrontendScan(t *testing.T) {
	big := strings.Repeat("select 'commit';", 20)
	tlsJunk := append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, query("commit")...)
	tests := []struct {
		name   string
		segs   []seg
		match  func(string) bool // nil: unarmed
		answer byte
	}{
		{
			name: "simple commit after SSLRequest refused",
			segs: []seg{
				{sslRequest(), eventNegotiate}, {startup(), 0}, {query("select 1"), 0},
				{query(" COMMIT ;\n"), eventCut}, {query("select 2"), 0}, {terminate(), 0},
			},
			match: IsCommit, answer: 'N',
		},
		{
			name: "unarmed finds nothing",
			segs: []seg{
				{sslRequest(), eventNegotiate}, {startup(), 0}, {query("commit"), 0},
				{parse("", "commit"), 0}, {bind("", ""), 0}, {execute(""), 0}, {syncMsg(), 0},
			},
			answer: 'N',
		},
		{
			name: "TLS negotiated: stream is opaque",
			segs: []seg{
				{sslRequest(), eventNegotiate}, {tlsJunk, 0}, {query("commit"), 0},
			},
			match: IsCommit, answer: 'S',
		},
		{
			name: "GSSENCRequest and SSLRequest refused",
			segs: []seg{
				{gssencRequest(), eventNegotiate}, {sslRequest(), eventNegotiate}, {startup(), 0},
				{query("end work"), eventCut},
			},
			match: IsCommit, answer: 'N',
		},
		{
			name:  "no negotiation",
			segs:  []seg{{startup(), 0}, {query("commit"), eventCut}},
			match: IsCommit,
		},
		{
			name: "protocol 3.2 startup",
			segs: []seg{
				{untyped(3<<16|2, cz("user"), cz("app"), []byte{0}), 0}, {query("commit"), eventCut},
			},
			match: IsCommit,
		},
		{
			name: "commit text inside other messages is ignored",
			segs: []seg{
				{startup(), 0}, {typed('d', []byte("commit")), 0}, {query("select 'commit'"), 0},
				{query(big), 0}, {query("commit transaction"), eventCut},
			},
			match: IsCommit,
		},
		{
			name: "prepare round trip, then bind execute sync (pgx cache mode)",
			segs: []seg{
				{startup(), 0}, {parse("stmt_1", "insert into t values ($1)"), 0}, {describe('S', "stmt_1"), 0},
				{syncMsg(), 0}, {bind("", "stmt_1"), 0}, {describe('P', ""), 0}, {execute(""), 0},
				{syncMsg(), eventCut}, {query("select 1"), 0},
			},
			match: isInsert,
		},
		{
			name: "unnamed parse bind execute sync (pgx exec mode)",
			segs: []seg{
				{startup(), 0}, {parse("", "insert into t values ($1)"), 0}, {bind("", ""), 0},
				{describe('P', ""), 0}, {execute(""), 0}, {syncMsg(), eventCut},
			},
			match: isInsert,
		},
		{
			name: "batch: cut waits for the sync after later statements",
			segs: []seg{
				{startup(), 0}, {parse("", "insert into t values ($1)"), 0}, {bind("", ""), 0}, {execute(""), 0},
				{parse("", "select 1"), 0}, {bind("", ""), 0}, {execute(""), 0}, {syncMsg(), eventCut},
			},
			match: isInsert,
		},
		{
			name: "commit through the extended protocol",
			segs: []seg{
				{startup(), 0}, {parse("", "COMMIT"), 0}, {bind("", ""), 0}, {execute(""), 0}, {syncMsg(), eventCut},
			},
			match: IsCommit,
		},
		{
			name: "unnamed statement replaced before it ran",
			segs: []seg{
				{startup(), 0}, {parse("", "insert into t values ($1)"), 0}, {parse("", "select 1"), 0},
				{bind("", ""), 0}, {execute(""), 0}, {syncMsg(), 0},
			},
			match: isInsert,
		},
		{
			name: "statement closed before it ran",
			segs: []seg{
				{startup(), 0}, {parse("s1", "insert into t values ($1)"), 0}, {syncMsg(), 0},
				{closeStmt("s1"), 0}, {syncMsg(), 0}, {bind("", "s1"), 0}, {execute(""), 0}, {syncMsg(), 0},
			},
			match: isInsert,
		},
		{
			name: "another statement executed",
			segs: []seg{
				{startup(), 0}, {parse("s1", "insert into t values ($1)"), 0}, {syncMsg(), 0},
				{bind("", "s2"), 0}, {execute(""), 0}, {syncMsg(), 0},
			},
			match: isInsert,
		},
		{
			name: "bound but not executed",
			segs: []seg{
				{startup(), 0}, {parse("", "insert into t values ($1)"), 0}, {bind("", ""), 0}, {syncMsg(), 0},
			},
			match: isInsert,
		},
		{
			name:  "direct TLS: no startup packet",
			segs:  []seg{{tlsJunk, 0}, {query("commit"), 0}},
			match: IsCommit,
		},
		{
			name:  "CancelRequest: nothing follows",
			segs:  []seg{{untyped(codeCancelRequest, be32(1234), be32(5678)), 0}, {query("commit"), 0}},
			match: IsCommit,
		},
		{
			name:  "broken typed length",
			segs:  []seg{{startup(), 0}, {[]byte{'Q', 0, 0, 0, 3}, 0}, {query("commit"), 0}},
			match: IsCommit,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			all, want := stream(tt.segs)
			var req *cutRequest
			if tt.match != nil {
				req = armed(tt.match)
			}
			for name, chunks := range splits(all) {
				got := collect(chunks, req, tt.answer)
				if !assert.Equal(t, want, got, "split %s", name) {
					return
				}
			}
		})
	}
}

func TestFrontendLargeQuery(t *testing.T) {
	huge := query("select '" + strings.Repeat("commit", 100_000) + "'")
	all, want := stream([]seg{{startup(), 0}, {huge, 0}, {query("commit"), eventCut}, {huge, 0}, {query("end"), eventCut}})
	var chunks [][]byte
	for p := all; len(p) > 0; {
		k := min(1000, len(p))
		chunks = append(chunks, p[:k])
		p = p[k:]
	}
	assert.Equal(t, want, collect(chunks, armed(IsCommit), 'N'))
}

func TestFrontendArmingTakesEffectAtNextMessage(t *testing.T) {
	req := armed(IsCommit)
	f := newFrontend()
	s := startup()
	n, ev := f.scan(s, nil)
	require.Equal(t, len(s), n)
	require.Equal(t, eventNone, ev)

	c := query("commit")
	_, ev = f.scan(c[:6], nil) // header and a byte seen unarmed
	require.Equal(t, eventNone, ev)
	_, ev = f.scan(c[6:], req) // armed mid-message: this one is not inspected
	require.Equal(t, eventNone, ev)

	n, ev = f.scan(c, req)
	assert.Equal(t, len(c), n)
	assert.Equal(t, eventCut, ev)
}

func TestFrontendPendingStatementNeedsSameRequest(t *testing.T) {
	s, _ := stream([]seg{{startup(), 0}, {parse("", "insert into t values ($1)"), 0}})
	rest, _ := stream([]seg{{bind("", ""), 0}, {execute(""), 0}, {syncMsg(), 0}})
	for name, later := range map[string]*cutRequest{"disarmed": nil, "re-armed": armed(isInsert)} {
		t.Run(name, func(t *testing.T) {
			f := newFrontend()
			n, ev := f.scan(s, armed(isInsert))
			require.Equal(t, len(s), n)
			require.Equal(t, eventNone, ev)
			n, ev = f.scan(rest, later)
			assert.Equal(t, len(rest), n)
			assert.Equal(t, eventNone, ev)
		})
	}
}

func TestFrontendUnarmedDoesNotAllocate(t *testing.T) {
	var b []byte
	b = append(b, startup()...)
	for range 100 {
		b = append(b, parse("", "insert into t values ($1)")...)
		b = append(b, bind("", "")...)
		b = append(b, execute("")...)
		b = append(b, syncMsg()...)
		b = append(b, query("commit")...)
	}
	f := newFrontend()
	allocs := testing.AllocsPerRun(100, func() {
		f.state, f.need, f.hdrN = stateStartup, 8, 0
		for p := b; len(p) > 0; {
			n, _ := f.scan(p, nil)
			p = p[n:]
		}
	})
	assert.Zero(t, allocs)
}

func BenchmarkFrontendUnarmed(b *testing.B) {
	var msgs []byte
	for range 100 {
		msgs = append(msgs, query("select * from t where id = 1")...)
		msgs = append(msgs, typed('d', make([]byte, 8000))...)
	}
	f := newFrontend()
	f.scan(startup(), nil)
	b.SetBytes(int64(len(msgs)))
	for b.Loop() {
		for p := msgs; len(p) > 0; {
			n, _ := f.scan(p, nil)
			p = p[n:]
		}
	}
}

func TestIsCommit(t *testing.T) {
	yes := []string{
		"commit", "COMMIT", "Commit;", " commit ; ", "end", "END;", "commit transaction",
		"COMMIT   WORK", "end transaction;", "End Work", "\tcommit\n",
	}
	no := []string{
		"", ";", "commit and chain", "commit prepared 'x'", "rollback", "begin", "select 'commit'",
		"commit;;", "endless", "committed", "commit transaction work", "end; select 1",
	}
	for _, q := range yes {
		assert.True(t, IsCommit(q), "%q", q)
	}
	for _, q := range no {
		assert.False(t, IsCommit(q), "%q", q)
	}
}

// FuzzFrontendSplit checks that the scanner never panics and that where a
// stream is split into reads never changes what it finds.
func FuzzFrontendSplit(f *testing.F) {
	seeds := [][]byte{
		bytes.Join([][]byte{sslRequest(), startup(), query("select 1"), query("commit")}, nil),
		bytes.Join([][]byte{startup(), parse("s", "commit"), describe('S', "s"), syncMsg(), bind("", "s"), execute(""), syncMsg()}, nil),
		bytes.Join([][]byte{gssencRequest(), sslRequest(), startup(), closeStmt("s"), typed('d', []byte("commit"))}, nil),
	}
	for _, s := range seeds {
		f.Add(s, uint16(len(s)/2))
	}
	f.Fuzz(func(t *testing.T, b []byte, at uint16) {
		match := func(q string) bool { return IsCommit(q) || isInsert(q) }
		whole := collect([][]byte{b}, armed(match), 'N')
		k := 0
		if len(b) > 0 {
			k = int(at) % len(b)
		}
		split := collect([][]byte{b[:k], b[k:]}, armed(match), 'N')
		if !assert.Equal(t, whole, split) {
			t.FailNow()
		}
	})
}
