package sockcheck

import (
	"crypto/tls"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns a connected client and server TCP connection on loopback.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	server = <-accepted
	require.NotNil(t, server)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// eventually polls Unfit: a peer's FIN or data takes a moment to arrive.
func eventually(ch *Checker) bool {
	for i := 0; i < 200; i++ {
		if ch.Unfit() {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

func TestUnfit(t *testing.T) {
	t.Run("idle connection is fit", func(t *testing.T) {
		c, _ := pair(t)
		ch := New(c)
		assert.False(t, ch.Unfit())
		assert.False(t, ch.Unfit(), "peeking consumes nothing")
	})
	t.Run("peer closed", func(t *testing.T) {
		c, s := pair(t)
		ch := New(c)
		require.NoError(t, s.Close())
		assert.True(t, eventually(ch))
	})
	t.Run("peer reset", func(t *testing.T) {
		c, s := pair(t)
		ch := New(c)
		require.NoError(t, s.(*net.TCPConn).SetLinger(0))
		require.NoError(t, s.Close())
		assert.True(t, eventually(ch))
	})
	t.Run("an ErrorResponse waiting is unfit, and not consumed", func(t *testing.T) {
		c, s := pair(t)
		ch := New(c)
		_, err := s.Write([]byte("E"))
		require.NoError(t, err)
		assert.True(t, eventually(ch))
		buf := make([]byte, 1)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Second)))
		n, err := c.Read(buf)
		require.NoError(t, err)
		assert.Equal(t, "E", string(buf[:n]), "the peeked byte is still there for the driver")
	})
	t.Run("NOTIFY, notice and ParameterStatus waiting are fit", func(t *testing.T) {
		c, s := pair(t)
		ch := New(c)
		msgs := append(append(msg('A', "\x00\x00\x00\x2achan\x00payload\x00"), msg('N', "SNOTICE\x00\x00")...), msg('S', "in_hot_standby\x00off\x00")...)
		_, err := s.Write(msgs)
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
		assert.False(t, ch.Unfit())
		assert.False(t, ch.Unfit(), "still: nothing was consumed")
	})
	t.Run("an ErrorResponse behind a NOTIFY is unfit", func(t *testing.T) {
		c, s := pair(t)
		ch := New(c)
		_, err := s.Write(append(msg('A', "\x00\x00\x00\x01c\x00\x00"), msg('E', "SFATAL\x00\x00")...))
		require.NoError(t, err)
		assert.True(t, eventually(ch))
	})
	t.Run("a close behind a NOTIFY is unfit", func(t *testing.T) {
		if runtime.GOOS != "linux" {
			t.Skip("only Linux's POLLRDHUP sees a close behind unread data")
		}
		c, s := pair(t)
		ch := New(c)
		_, err := s.Write(msg('A', "\x00\x00\x00\x01c\x00\x00"))
		require.NoError(t, err)
		require.NoError(t, s.Close())
		assert.True(t, eventually(ch))
	})
	t.Run("closed on our side", func(t *testing.T) {
		c, _ := pair(t)
		ch := New(c)
		require.NoError(t, c.Close())
		assert.True(t, ch.Unfit())
	})
	t.Run("TLS wrapper is looked through", func(t *testing.T) {
		c, s := pair(t)
		ch := New(tls.Client(c, &tls.Config{InsecureSkipVerify: true}))
		assert.False(t, ch.Unfit())
		_, err := s.Write([]byte("E-looking TLS record"))
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
		assert.False(t, ch.Unfit(), "TLS records are not read as messages")
		require.NoError(t, s.Close())
		assert.True(t, eventually(ch))
	})
	t.Run("uninspectable connection", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		assert.False(t, New(a).Unfit())
		var nilChecker *Checker
		assert.False(t, nilChecker.Unfit())
	})
}

// msg frames a backend message.
func msg(typ byte, body string) []byte {
	n := len(body) + 4
	return append([]byte{typ, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

func TestOnlyAsync(t *testing.T) {
	notify := string(msg('A', "\x00\x00\x00\x01c\x00p\x00"))
	for _, tc := range []struct {
		name string
		in   string
		want bool
	}{
		{"empty", "", true},
		{"one NOTIFY", notify, true},
		{"NOTIFY, notice, ParameterStatus", notify + string(msg('N', "x")) + string(msg('S', "a\x00b\x00")), true},
		{"ErrorResponse", string(msg('E', "SFATAL\x00")), false},
		{"ErrorResponse after NOTIFY", notify + string(msg('E', "x")), false},
		{"a reply to nothing", string(msg('Z', "I")), false},
		{"cut in the header", notify + "A\x00\x00", true},
		{"cut in the body", notify[:8], true},
		{"bad length", "A\x00\x00\x00\x02", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, onlyAsync([]byte(tc.in)))
		})
	}
}

func TestUnfitDoesNotAllocate(t *testing.T) {
	c, _ := pair(t)
	ch := New(c)
	allocs := testing.AllocsPerRun(100, func() { ch.Unfit() })
	assert.Zero(t, allocs)
}
