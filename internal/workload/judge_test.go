package workload

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	t0         = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	errEOF     = errors.New("unexpected EOF")
	errUnknown = fmt.Errorf("unified: %w: %w", unified.ErrCommitUnknown, errEOF)
)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestJudge(t *testing.T) {
	tests := []struct {
		name     string
		o        Outcomes
		stored   map[int64]int
		from, to time.Time
		want     Verdict
	}{
		{
			name:   "all acknowledged and stored once",
			o:      Outcomes{Writes: []Write{{ID: 1, At: at(1)}, {ID: 2, At: at(2)}}},
			stored: map[int64]int{1: 1, 2: 1},
			want:   Verdict{Acked: 2},
		},
		{
			name:   "acknowledged but absent is lost",
			o:      Outcomes{Writes: []Write{{ID: 1, At: at(1)}, {ID: 2, At: at(2)}}},
			stored: map[int64]int{1: 1},
			want:   Verdict{Acked: 2, Lost: 1},
		},
		{
			name:   "an id stored twice is a duplicate",
			o:      Outcomes{Writes: []Write{{ID: 1, At: at(1)}, {ID: 2, At: at(2)}}},
			stored: map[int64]int{1: 2, 2: 1},
			want:   Verdict{Acked: 2, Duplicates: 1},
		},
		{
			name: "ErrCommitUnknown: counted, and whether stored",
			o: Outcomes{Writes: []Write{
				{ID: 1, At: at(1), Err: errUnknown}, {ID: 2, At: at(2), Err: errUnknown},
			}},
			stored: map[int64]int{1: 1},
			want:   Verdict{Unknown: 2, UnknownStored: 1, UnknownErrors: []string{errUnknown.Error()}},
		},
		{
			name: "another error that was stored is unflagged",
			o: Outcomes{Writes: []Write{
				{ID: 1, At: at(1), Err: errEOF}, {ID: 2, At: at(2), Err: errors.New("57P01")}, {ID: 3, At: at(3), Err: errEOF},
			}},
			stored: map[int64]int{1: 1},
			want:   Verdict{Failed: 3, FailedStored: 1, FailedErrors: []string{"unexpected EOF", "57P01"}},
		},
		{
			name: "reads in the window only, by node",
			o: Outcomes{Reads: []Read{
				{At: at(1), Node: 1}, {At: at(10), Node: 1}, {At: at(11), Node: 2}, {At: at(12), Node: -1, Err: errEOF},
				{At: at(20), Node: 2}, {At: at(21), Node: 2},
			}},
			from: at(10), to: at(20),
			want: Verdict{ReadsOK: 3, ReadsFailed: 1, ReadsByNode: map[int]int{1: 1, 2: 2}, ReadErrors: []string{"unexpected EOF"}},
		},
		{
			name: "zero window: every read",
			o:    Outcomes{Reads: []Read{{At: at(1), Node: 0}, {At: at(99), Node: -1}}},
			want: Verdict{ReadsOK: 2, ReadsByNode: map[int]int{0: 1, -1: 1}},
		},
		{
			name: "error samples are distinct and at most five",
			o: func() Outcomes {
				var o Outcomes
				for i := range 20 {
					o.Writes = append(o.Writes, Write{ID: int64(i), Err: fmt.Errorf("e%d", i%7)})
				}
				return o
			}(),
			want: Verdict{Failed: 20, FailedErrors: []string{"e0", "e1", "e2", "e3", "e4"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.want.ReadsByNode == nil {
				tt.want.ReadsByNode = map[int]int{}
			}
			assert.Equal(t, tt.want, Judge(tt.o, tt.stored, tt.from, tt.to))
		})
	}
}

func TestSamples(t *testing.T) {
	v := Verdict{UnknownErrors: []string{"u1"}, FailedErrors: []string{"f1", "f2"}, ReadErrors: []string{"r1"}}
	assert.Equal(t, []string{"u1", "f1", "f2"}, v.Samples(3))
	assert.Equal(t, []string{"u1", "f1", "f2", "r1"}, v.Samples(6))
	assert.Empty(t, Verdict{}.Samples(6))
}

func TestAcks(t *testing.T) {
	o := Outcomes{Writes: []Write{
		{ID: 1, At: at(5)}, {ID: 2, At: at(30)}, {ID: 3, At: at(20), Err: errEOF}, {ID: 4, At: at(25)}, {ID: 5, At: at(10)},
	}}
	tests := []struct {
		since      time.Time
		acked      int
		firstAfter time.Time
	}{
		{since: time.Time{}, acked: 4, firstAfter: at(5)},
		{since: at(10), acked: 3, firstAfter: at(10)},
		{since: at(11), acked: 2, firstAfter: at(25)}, // the failed write at 20 is no acknowledgement
		{since: at(31), acked: 0, firstAfter: time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.since.Format("05.000"), func(t *testing.T) {
			assert.Equal(t, tt.acked, o.AckedSince(tt.since))
			assert.Equal(t, tt.firstAfter, o.FirstAckAfter(tt.since))
		})
	}
}

func TestRecovery(t *testing.T) {
	acks := func(ms ...int) Outcomes {
		var o Outcomes
		for i, m := range ms {
			o.Writes = append(o.Writes, Write{ID: int64(i), At: at(m)})
		}
		o.Writes = append(o.Writes, Write{ID: 99, At: at(150), Err: errEOF}) // failures are not acknowledgements
		return o
	}
	tests := []struct {
		name                    string
		o                       Outcomes
		promoted, deadline, end time.Time
		wantResumed             time.Time
		wantLongest             time.Duration
	}{
		{
			name: "resumed: the longest gap spans the failover",
			o:    acks(0, 10, 20, 200, 210), promoted: at(150), deadline: at(1000), end: at(300),
			wantResumed: at(200), wantLongest: 180 * time.Millisecond,
		},
		{
			name: "unsorted acknowledgements",
			o:    acks(210, 20, 200, 0, 10), promoted: at(150), deadline: at(1000), end: at(300),
			wantResumed: at(200), wantLongest: 180 * time.Millisecond,
		},
		{
			name: "no ack after the promotion: the outage runs to the end",
			o:    acks(0, 10, 20), promoted: at(150), deadline: at(1000), end: at(500),
			wantLongest: 480 * time.Millisecond,
		},
		{
			name: "resumed after the deadline counts as not resumed",
			o:    acks(0, 10, 20, 900), promoted: at(150), deadline: at(400), end: at(950),
			wantLongest: 930 * time.Millisecond,
		},
		{
			name: "no deadline",
			o:    acks(0, 900), promoted: at(150), end: at(950),
			wantResumed: at(900), wantLongest: 900 * time.Millisecond,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.o.Recovery(tt.promoted, tt.deadline, tt.end)
			assert.Equal(t, tt.wantResumed, r.Resumed)
			assert.Equal(t, tt.wantLongest, r.LongestOutage)
		})
	}
}
