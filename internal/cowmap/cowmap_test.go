package cowmap

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestGet(t *testing.T) {
	type step struct {
		key        string
		want       int
		wantStored bool
		wantCalled bool // compute called
	}
	for _, tc := range []struct {
		name  string
		limit int
		steps []step
	}{
		{"a miss stores, a hit does not compute", 2, []step{
			{"a", 1, true, true},
			{"a", 1, true, false},
		}},
		{"beyond the bound computes every time without storing", 2, []step{
			{"a", 1, true, true},
			{"b", 2, true, true},
			{"c", 3, false, true},
			{"c", 4, false, true},
			{"a", 1, true, false},
			{"b", 2, true, false},
		}},
		{"limit 0 stores nothing", 0, []step{
			{"a", 1, false, true},
			{"a", 2, false, true},
		}},
		{"negative limit stores nothing", -1, []step{
			{"a", 1, false, true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New[string, int](tc.limit)
			calls := 0
			for i, s := range tc.steps {
				called := false
				got, stored := m.Get(s.key, func() (string, int) {
					called = true
					calls++
					return s.key, calls
				})
				assert.Equal(t, s.want, got, "step %d", i)
				assert.Equal(t, s.wantStored, stored, "step %d", i)
				assert.Equal(t, s.wantCalled, called, "step %d", i)
			}
			assert.LessOrEqual(t, m.Len(), max(tc.limit, 0))
		})
	}
}

// TestGetStoresComputedKey: the entry is stored under the key compute
// returns, so the caller's k may borrow memory it reuses.
func TestGetStoresComputedKey(t *testing.T) {
	m := New[string, string](4)
	buf := []byte("select")
	k := string(buf)
	v, stored := m.Get(k, func() (string, string) { return strings.Clone(k), "SELECT" })
	require.True(t, stored)
	assert.Equal(t, "SELECT", v)
	v, stored = m.Get("select", func() (string, string) { t.Fatal("computed again"); return "", "" })
	assert.True(t, stored)
	assert.Equal(t, "SELECT", v)
	assert.Equal(t, 1, m.Len())
}

func TestLenOfEmpty(t *testing.T) {
	assert.Equal(t, 0, New[int, int](3).Len())
}

// TestConcurrentGet: many goroutines asking for overlapping keys, under
// -race: while there is room a key is computed once and every caller sees
// its value; the bound holds.
func TestConcurrentGet(t *testing.T) {
	const limit, keys, workers, rounds = 16, 40, 8, 200
	m := New[int, string](limit)
	var computed [keys]atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				k := (w*7 + r) % keys
				v, stored := m.Get(k, func() (int, string) {
					computed[k].Add(1)
					return k, fmt.Sprint(k)
				})
				if v != fmt.Sprint(k) {
					t.Errorf("Get(%d) = %q", k, v)
				}
				if stored && computed[k].Load() == 0 {
					t.Errorf("Get(%d) stored a value nobody computed", k)
				}
			}
		})
	}
	wg.Wait()
	assert.Equal(t, limit, m.Len())
	for k := range keys {
		if _, stored := m.Get(k, func() (int, string) { return k, "" }); stored {
			assert.EqualValues(t, 1, computed[k].Load(), "key %d stored, so computed once", k)
		}
	}
}

// TestHitAllocatesNothing: a hit allocates nothing, with a compute closure
// that captures its surroundings and a key converted from a byte buffer.
func TestHitAllocatesNothing(t *testing.T) {
	type key struct {
		n    int
		name string
	}
	structs := New[key, []int](8)
	structs.Get(key{1, "a"}, func() (key, []int) { return key{1, "a"}, []int{1} })
	strs := New[string, string](8)
	strs.Get("select", func() (string, string) { return "select", "SELECT" })
	buf := []byte("select")
	n := 1
	allocs := testing.AllocsPerRun(100, func() {
		v, _ := structs.Get(key{n, "a"}, func() (key, []int) { return key{n, "a"}, []int{n} })
		if len(v) != 1 {
			t.Fatal("miss")
		}
		s, _ := strs.Get(string(buf), func() (string, string) { return string(buf), "SELECT" })
		if s != "SELECT" {
			t.Fatal("miss")
		}
	})
	assert.Zero(t, allocs)
}

func BenchmarkGetHit(b *testing.B) {
	m := New[string, int](64)
	m.Get("select", func() (string, int) { return "select", 1 })
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Get("select", func() (string, int) { return "select", 1 })
		}
	})
}
