// Package cowmap is a bounded copy-on-write map for caches on hot paths:
// values that are costly to build (or to allocate) per call, looked up far
// more often than added.
//
// A hit is one atomic load and one map lookup: no lock, no allocation. A
// miss takes a mutex that serializes writers, copies the map with the new
// entry and publishes the copy, so an added entry costs O(n); the map holds
// at most a fixed number of entries, never evicts, and beyond the bound
// computes the value on every miss without storing it. That suits a small,
// bounded set of keys (attribute sets, operation names), not a general
// cache.
//
// A Map is safe for concurrent use.
package cowmap

import (
	"maps"
	"sync"
	"sync/atomic"
)

// Map is a bounded copy-on-write map from K to V. Make one with [New].
type Map[K comparable, V any] struct {
	m     atomic.Pointer[map[K]V] // never modified once published
	limit int

	mu sync.Mutex // serializes writers of m
}

// New returns an empty Map that stores at most limit entries (none when
// limit <= 0).
func New[K comparable, V any](limit int) *Map[K, V] {
	return &Map[K, V]{limit: limit}
}

// Get returns the value stored for k, and true. On a miss it calls compute,
// which returns the value and the key to store it under: k itself, or a
// copy of k that owns its memory where k borrows memory the caller reuses
// (a string converted from a buffer, a key that holds part of an error);
// Get never retains k. The value is stored while the map has room, and Get
// returns it with true; once the map is full Get returns compute's value
// with false, every time. While the map has room compute runs under the
// writers' lock, once per key; once it is full, without the lock, so it
// must be safe for concurrent use. compute must not call Get on the same
// Map.
func (m *Map[K, V]) Get(k K, compute func() (K, V)) (V, bool) {
	cur := m.m.Load()
	if cur != nil {
		if v, ok := (*cur)[k]; ok {
			return v, true
		}
	}
	if m.full(cur) {
		_, v := compute()
		return v, false
	}
	return m.add(k, compute)
}

// Len returns the number of entries stored.
func (m *Map[K, V]) Len() int {
	if cur := m.m.Load(); cur != nil {
		return len(*cur)
	}
	return 0
}

func (m *Map[K, V]) full(cur *map[K]V) bool {
	n := 0
	if cur != nil {
		n = len(*cur)
	}
	return n >= m.limit
}

// add is Get's miss under the writers' lock.
func (m *Map[K, V]) add(k K, compute func() (K, V)) (V, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.m.Load()
	if cur != nil {
		if v, ok := (*cur)[k]; ok {
			return v, true // added while this call waited for the lock
		}
	}
	own, v := compute()
	if m.full(cur) {
		return v, false
	}
	next := make(map[K]V, 1+m.Len())
	if cur != nil {
		maps.Copy(next, *cur)
	}
	next[own] = v
	m.m.Store(&next)
	return v, true
}
