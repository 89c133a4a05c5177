package unified

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSessionFloorOnlyRises(t *testing.T) {
	f := func(lsn uint64, tl uint32, sys uint64) floor { return floor{lsn: lsn, timeline: tl, system: sys} }
	cases := []struct {
		name       string
		start, add floor
		want       floor
	}{
		{"an empty session takes any floor", floor{}, f(100, 1, 7), f(100, 1, 7)},
		{"a later position", f(100, 1, 7), f(200, 1, 7), f(200, 1, 7)},
		{"an earlier position does not lower it", f(200, 1, 7), f(100, 1, 7), f(200, 1, 7)},
		{"a higher timeline wins, whatever its position", f(900, 1, 7), f(100, 2, 7), f(100, 2, 7)},
		{"a lower timeline does not", f(100, 2, 7), f(900, 1, 7), f(100, 2, 7)},
		{"an unknown floor gives way to the next known one", f(unknownLSN, 1, 7), f(300, 1, 7), f(300, 1, 7)},
		{"an unknown floor raises a known one", f(300, 1, 7), f(unknownLSN, 1, 7), f(unknownLSN, 1, 7)},
		{"another cluster: the newer write wins", f(900, 3, 7), f(100, 1, 8), f(100, 1, 8)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &Session{floor: tc.start}
			s.raise(tc.add)
			assert.Equal(t, tc.want, s.get())
		})
	}
}

func TestSessionToken(t *testing.T) {
	s := &Session{floor: floor{lsn: 0x16_B374D848, timeline: 3, system: 7441829345412765001}}
	tok := s.Token()
	assert.Len(t, tok, 28)
	assert.NotContains(t, tok, "=", "no padding")
	assert.Equal(t, tok, strings.Map(func(r rune) rune {
		if r == '+' || r == '/' {
			return -1
		}
		return r
	}, tok), "URL and header safe")
	got, err := ParseSession(tok)
	require.NoError(t, err)
	assert.Equal(t, s.get(), got.get())
	assert.Equal(t, "16/B374D848 on timeline 3", got.String())
	assert.Equal(t, "", NewSession().Token())
	assert.Equal(t, "empty", NewSession().String())
}

func FuzzParseSession(f *testing.F) {
	f.Add("")
	f.Add((&Session{floor: floor{lsn: 1, timeline: 1, system: 1}}).Token())
	f.Add((&Session{floor: floor{lsn: unknownLSN, timeline: 9, system: 0}}).Token())
	f.Add("AQAAAAEAAAAAAAAAAQAAAAAAAAAA")
	f.Add("not a token at all, but 28 c")
	f.Fuzz(func(t *testing.T, tok string) {
		s, err := ParseSession(tok)
		if err != nil {
			if !errors.Is(err, ErrBadSession) {
				t.Fatalf("error not wrapping ErrBadSession: %v", err)
			}
			return
		}
		if again := s.Token(); again != tok {
			t.Fatalf("round trip: %q -> %q", tok, again)
		}
	})
}

func TestSessionHandlerHeaders(t *testing.T) {
	var seen *Session
	h := SessionHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := SessionFrom(r.Context())
		require.True(t, ok)
		seen = s
		if r.URL.Path == "/write" {
			s.raise(floor{lsn: 42, timeline: 1, system: 9})
		}
		_, _ = w.Write([]byte("ok"))
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/write", nil))
	tok := rec.Header().Get(SessionHeader)
	require.NotEmpty(t, tok, "a write's floor reaches the response")

	req := httptest.NewRequest(http.MethodGet, "/read", nil)
	req.Header.Set(SessionHeader, tok)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	assert.Equal(t, uint64(42), seen.get().lsn, "the request runs with the token's session")
	assert.Equal(t, tok, rec.Header().Get(SessionHeader), "and hands it back")

	req = httptest.NewRequest(http.MethodGet, "/read", nil)
	req.Header.Set(SessionHeader, "garbage")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	assert.True(t, seen.get().zero(), "a malformed token is an empty session")
	assert.Empty(t, rec.Header().Get(SessionHeader))
}

func TestSessionAndModeShareOneLookup(t *testing.T) {
	s := NewSession()
	ctx := WithMaxLag(WithMode(WithSession(context.Background(), s), ReadOnly), 5)
	m, ok := ModeFrom(ctx)
	assert.True(t, ok)
	assert.Equal(t, ReadOnly, m)
	got, ok := SessionFrom(ctx)
	assert.True(t, ok)
	assert.Same(t, s, got)
	h := hintsFrom(ctx)
	assert.True(t, h.lagSet)
	_, ok = SessionFrom(WithSession(ctx, nil))
	assert.False(t, ok, "a nil session is none")
	_, ok = SessionFrom(context.Background())
	assert.False(t, ok)
}
