package topology

import (
	"math/bits"
	"sort"
	"time"
)

// History bounds: enough for the default 1 s probe interval over the whole
// window, and far more than any useful lag bound.
const (
	historySamples = 1024
	historyWindow  = 10 * time.Minute
)

type sample struct {
	at  time.Time
	lsn uint64
}

// History holds recent samples of the primary's WAL position, to turn a
// replica's replay LSN into a time lag: how long ago the primary was where
// the replica is now. It keeps at most 1024 samples spanning at most 10
// minutes, so time lags saturate around the window's length.
//
// Runs of equal LSNs (an idle primary) are stored as their first and last
// sample only, so an idle cluster does not crowd out older history.
//
// The zero value is an empty History ready to use. A History is not safe for
// concurrent use: the health monitor's goroutine owns it.
type History struct {
	buf  []sample // ring, allocated on first Add
	head int      // index of the oldest sample
	n    int
}

func (h *History) at(i int) *sample { return &h.buf[(h.head+i)%len(h.buf)] }

// Add records that the primary was at lsn at time at. A sample going
// backwards, in LSN or in time, means the history no longer describes one
// continuous WAL stream (a new primary, a restored node): the history is
// reset and starts again from this sample. Call Reset explicitly when the
// primary changes, since a new primary's LSN is usually ahead of the old one.
func (h *History) Add(at time.Time, lsn uint64) {
	if h.buf == nil {
		h.buf = make([]sample, historySamples)
	}
	if h.n > 0 {
		newest := h.at(h.n - 1)
		if lsn < newest.lsn || at.Before(newest.at) {
			h.Reset()
		} else if lsn == newest.lsn && h.n >= 2 && h.at(h.n-2).lsn == lsn {
			// Extend the run of equal LSNs: keep its first and last sample.
			newest.at = at
			h.trim()
			return
		}
	}
	if h.n == len(h.buf) {
		h.head = (h.head + 1) % len(h.buf)
		h.n--
	}
	*h.at(h.n) = sample{at: at, lsn: lsn}
	h.n++
	h.trim()
}

// trim drops samples older than the window, measured from the newest one,
// always keeping the newest.
func (h *History) trim() {
	cutoff := h.at(h.n - 1).at.Add(-historyWindow)
	for h.n > 1 && h.at(0).at.Before(cutoff) {
		h.head = (h.head + 1) % len(h.buf)
		h.n--
	}
}

// Reset forgets every sample. Call it when a different node becomes the
// primary: its WAL positions are not comparable with the old one's samples.
func (h *History) Reset() {
	h.head, h.n = 0, 0
}

// Len returns the number of samples held.
func (h *History) Len() int { return h.n }

// TimeLag returns how far in time a replica that has replayed up to replay
// is behind the primary, as of now:
//
//   - 0 if the history is empty, or if replay is at or past the newest
//     sample (an idle cluster has no lag, however long it stays idle);
//   - otherwise now minus the time the primary was at replay, linearly
//     interpolated between the last sample at or before replay and the first
//     one after it;
//   - if replay is older than every sample, now minus the oldest sample's
//     time (a lower bound).
//
// The result is never negative.
func (h *History) TimeLag(replay uint64, now time.Time) time.Duration {
	if h == nil || h.n == 0 || replay >= h.at(h.n-1).lsn {
		return 0
	}
	// First sample past replay; it exists since the newest one is.
	i := sort.Search(h.n, func(i int) bool { return h.at(i).lsn > replay })
	var was time.Time
	if i == 0 {
		was = h.at(0).at
	} else {
		lo, hi := h.at(i-1), h.at(i)
		was = lo.at.Add(interpolate(hi.at.Sub(lo.at), replay-lo.lsn, hi.lsn-lo.lsn))
	}
	if lag := now.Sub(was); lag > 0 {
		return lag
	}
	return 0
}

// interpolate returns span * num / den exactly (128-bit intermediate), for
// 0 <= num < den and span >= 0.
func interpolate(span time.Duration, num, den uint64) time.Duration {
	if span <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(span), num)
	q, _ := bits.Div64(hi, lo, den) // q < span since num < den: no overflow
	return time.Duration(q)
}

// Covers reports whether a replica replayed up to replay is within the
// history: at or past its oldest sample, so that TimeLag is the lag itself
// and not a lower bound. An empty history covers nothing.
func (h *History) Covers(replay uint64) bool {
	return h != nil && h.n > 0 && replay >= h.at(0).lsn
}
