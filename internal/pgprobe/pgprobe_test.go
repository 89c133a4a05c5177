package pgprobe

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeQueryer answers every query with rows (or err) and records the call.
type fakeQueryer struct {
	err  error
	rows *fakeRows

	calls int
	query string
	args  []driver.NamedValue
	ctx   context.Context
}

func (f *fakeQueryer) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	f.calls++
	f.ctx, f.query, f.args = ctx, query, args
	if f.err != nil {
		return nil, f.err
	}
	return f.rows, nil
}

type fakeRows struct {
	cols     []string
	values   [][]driver.Value
	nextErr  error // returned by Next instead of a row
	closeErr error

	next   int
	closed int
}

func (r *fakeRows) Columns() []string { return r.cols }

func (r *fakeRows) Close() error {
	r.closed++
	return r.closeErr
}

func (r *fakeRows) Next(dest []driver.Value) error {
	if r.nextErr != nil {
		return r.nextErr
	}
	if r.next >= len(r.values) {
		return io.EOF
	}
	copy(dest, r.values[r.next])
	r.next++
	return nil
}

var probeCols = []string{"in_recovery", "lsn", "timeline", "system", "started", "senders"}

// row is one probe row; the identity columns are NULL unless given.
func row(vals ...driver.Value) *fakeRows {
	for len(vals) < len(probeCols) {
		vals = append(vals, nil)
	}
	return &fakeRows{cols: probeCols, values: [][]driver.Value{vals}}
}

type ctxKey struct{}

func TestRun(t *testing.T) {
	errQuery := &pgconn.PgError{Severity: "FATAL", Code: "57P03", Message: "the database system is starting up"}
	errNext := errors.New("unexpected EOF while reading")
	errClose := &pgconn.PgError{Severity: "ERROR", Code: "XX000", Message: "boom"}

	tests := []struct {
		name    string
		q       *fakeQueryer
		want    Result
		wantErr error  // matched with errors.Is
		errText string // a substring, when wantErr is nil
	}{
		{
			name: "primary, pgx stdlib types",
			q:    &fakeQueryer{rows: row(false, "16/B374D848", int64(3))},
			want: Result{InRecovery: false, LSN: 0x16_B374D848, Timeline: 3},
		},
		{
			name: "with the server's identity",
			q:    &fakeQueryer{rows: row(false, "1/0", int64(1), "7441829345412765001", "2026-12-01 20:28:59.178764+00", int64(2))},
			want: Result{LSN: 1 << 32, Timeline: 1, SystemID: 7441829345412765001, Started: "2026-12-01 20:28:59.178764+00", Senders: 2},
		},
		{
			name:    "bad system identifier",
			q:       &fakeQueryer{rows: row(false, "1/0", int64(1), "x7", "t")},
			errText: "invalid system identifier",
		},
		{
			name: "replica that replayed nothing",
			q:    &fakeQueryer{rows: row(true, "0/0", int64(0))},
			want: Result{InRecovery: true},
		},
		{
			name: "text protocol bytes",
			q:    &fakeQueryer{rows: row([]byte("t"), []byte("0/3000060"), []byte("2"))},
			want: Result{InRecovery: true, LSN: 0x3000060, Timeline: 2},
		},
		{
			name: "strings and int32",
			q:    &fakeQueryer{rows: row("f", "1/0", int32(7))},
			want: Result{LSN: 1 << 32, Timeline: 7},
		},
		{
			name: "integer boolean",
			q:    &fakeQueryer{rows: row(int64(1), "1/1", "4")},
			want: Result{InRecovery: true, LSN: 1<<32 | 1, Timeline: 4},
		},
		{
			name: "largest timeline",
			q:    &fakeQueryer{rows: row(false, "FFFFFFFF/FFFFFFFF", int64(math.MaxUint32))},
			want: Result{LSN: math.MaxUint64, Timeline: math.MaxUint32},
		},
		{
			name: "only the first row is read",
			q: &fakeQueryer{rows: &fakeRows{cols: probeCols, values: [][]driver.Value{
				{false, "0/10", int64(1)}, {true, "0/20", int64(2)},
			}}},
			want: Result{LSN: 0x10, Timeline: 1},
		},
		{name: "zero rows", q: &fakeQueryer{rows: &fakeRows{cols: probeCols}}, wantErr: ErrNoRow},
		{name: "query error is wrapped", q: &fakeQueryer{err: errQuery}, wantErr: errQuery},
		{name: "query connection error is wrapped", q: &fakeQueryer{err: io.ErrUnexpectedEOF}, wantErr: io.ErrUnexpectedEOF},
		{name: "next error is wrapped", q: &fakeQueryer{rows: &fakeRows{cols: probeCols, nextErr: errNext}}, wantErr: errNext},
		{
			name:    "close error is returned",
			q:       &fakeQueryer{rows: &fakeRows{cols: probeCols, values: [][]driver.Value{{false, "0/1", int64(1)}}, closeErr: errClose}},
			wantErr: errClose,
		},
		{
			name:    "close error does not hide an earlier one",
			q:       &fakeQueryer{rows: &fakeRows{cols: probeCols, closeErr: errClose}},
			wantErr: ErrNoRow,
		},
		{name: "too few columns", q: &fakeQueryer{rows: &fakeRows{cols: probeCols[:2], values: [][]driver.Value{{false, "0/1"}}}}, errText: "2 columns"},
		{name: "in_recovery float", q: &fakeQueryer{rows: row(1.0, "0/1", int64(1))}, errText: "in_recovery: unexpected type float64"},
		{name: "in_recovery null", q: &fakeQueryer{rows: row(nil, "0/1", int64(1))}, errText: "in_recovery: unexpected type <nil>"},
		{name: "in_recovery bad text", q: &fakeQueryer{rows: row("maybe", "0/1", int64(1))}, errText: `invalid boolean "maybe"`},
		{name: "in_recovery bad integer", q: &fakeQueryer{rows: row(int32(2), "0/1", int64(1))}, errText: "invalid boolean 2"},
		{name: "lsn integer", q: &fakeQueryer{rows: row(false, int64(16), int64(1))}, errText: "lsn: unexpected type int64"},
		{name: "lsn null", q: &fakeQueryer{rows: row(false, nil, int64(1))}, errText: "lsn: unexpected type <nil>"},
		{name: "lsn bad text", q: &fakeQueryer{rows: row(false, "16-B374D848", int64(1))}, errText: `invalid LSN "16-B374D848"`},
		{name: "timeline float", q: &fakeQueryer{rows: row(false, "0/1", 1.5)}, errText: "timeline: unexpected type float64"},
		{name: "timeline null", q: &fakeQueryer{rows: row(false, "0/1", nil)}, errText: "timeline: unexpected type <nil>"},
		{name: "timeline negative", q: &fakeQueryer{rows: row(false, "0/1", int64(-1))}, errText: "timeline -1 out of range"},
		{name: "timeline too large", q: &fakeQueryer{rows: row(false, "0/1", int64(math.MaxUint32+1))}, errText: "out of range"},
		{name: "timeline bad text", q: &fakeQueryer{rows: row(false, "0/1", "two")}, errText: `invalid integer "two"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.WithValue(context.Background(), ctxKey{}, tt.name)
			got, err := Run(ctx, tt.q)

			assert.Equal(t, 1, tt.q.calls, "one round trip")
			assert.Equal(t, Query, tt.q.query)
			assert.Empty(t, tt.q.args)
			assert.Equal(t, tt.name, tt.q.ctx.Value(ctxKey{}), "the caller's ctx is used")
			if tt.q.rows != nil && tt.q.err == nil {
				assert.Equal(t, 1, tt.q.rows.closed, "rows closed exactly once")
			}

			switch {
			case tt.wantErr != nil:
				require.Error(t, err)
				assert.ErrorIs(t, err, tt.wantErr)
				assert.Equal(t, Result{}, got)
			case tt.errText != "":
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.errText)
				assert.True(t, strings.HasPrefix(err.Error(), "pgprobe: "), err.Error())
				assert.Equal(t, Result{}, got)
			default:
				require.NoError(t, err)
				assert.Equal(t, tt.want, got)
			}
		})
	}
}

func TestRunErrorKeepsPgError(t *testing.T) {
	q := &fakeQueryer{err: &pgconn.PgError{Code: "57P01"}}
	_, err := Run(context.Background(), q)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "57P01", pgErr.Code)
}

func TestQueryShape(t *testing.T) {
	// The live-server test is elsewhere; here only what the contract names.
	for _, s := range []string{
		"pg_is_in_recovery()",
		"pg_current_wal_lsn()",
		"pg_last_wal_replay_lsn()",
		"'0/0'",
		"pg_walfile_name(pg_current_wal_lsn())",
		"::bit(32)::int8",
		"received_tli FROM pg_stat_wal_receiver",
	} {
		assert.Contains(t, Query, s)
	}
	assert.Equal(t, 1, strings.Count(Query, "pg_is_in_recovery()"), "recovery evaluated once")
	assert.NotContains(t, Query, "$1", "no arguments")
}

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0/0", 0, true},
		{"16/B374D848", 0x16_B374D848, true},
		{"16/b374d848", 0x16_B374D848, true},
		{"0/3000060", 0x3000060, true},
		{"1/0", 1 << 32, true},
		{"FFFFFFFF/FFFFFFFF", math.MaxUint64, true},
		{"00000001/00000002", 1<<32 | 2, true},
		{"", 0, false},
		{"/", 0, false},
		{"1/", 0, false},
		{"/1", 0, false},
		{"1", 0, false},
		{"1/2/3", 0, false},
		{"000000001/0", 0, false},
		{"0/100000000", 0, false},
		{" 1/2", 0, false},
		{"1/2 ", 0, false},
		{"1 /2", 0, false},
		{"+1/2", 0, false},
		{"-1/2", 0, false},
		{"0x1/2", 0, false},
		{"1_0/2", 0, false},
		{"g/1", 0, false},
		{"1-2", 0, false},
		{"１/2", 0, false},
		{"1/2\x00", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseLSN(tt.in)
			if !tt.ok {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "invalid LSN")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestFormatLSN(t *testing.T) {
	tests := []struct {
		in   uint64
		want string
	}{
		{0, "0/0"},
		{0x16_B374D848, "16/B374D848"},
		{0x3000060, "0/3000060"},
		{1 << 32, "1/0"},
		{math.MaxUint64, "FFFFFFFF/FFFFFFFF"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			assert.Equal(t, tt.want, FormatLSN(tt.in))
		})
	}
}

func TestLSNRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		v := r.Uint64() >> r.UintN(64)
		got, err := ParseLSN(FormatLSN(v))
		require.NoError(t, err)
		require.Equal(t, v, got, "%s", FormatLSN(v))
	}
}

var lsnSyntax = regexp.MustCompile(`^[0-9a-fA-F]{1,8}/[0-9a-fA-F]{1,8}$`)

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "00000001/00000002", "", "/", "1/2/3", "000000001/0", "+1/2", "0x1/2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseLSN(s)
		if valid := lsnSyntax.MatchString(s); valid != (err == nil) {
			t.Fatalf("ParseLSN(%q) error = %v, syntax valid = %v", s, err, valid)
		}
		if err != nil {
			return
		}
		formatted := FormatLSN(v)
		hi, lo, _ := strings.Cut(s, "/")
		canon := strings.ToUpper(trimZeros(hi) + "/" + trimZeros(lo))
		if formatted != canon {
			t.Fatalf("FormatLSN(ParseLSN(%q)) = %q, want %q", s, formatted, canon)
		}
		back, err := ParseLSN(formatted)
		if err != nil || back != v {
			t.Fatalf("ParseLSN(%q) = %d, %v; want %d", formatted, back, err, v)
		}
	})
}

func trimZeros(s string) string {
	s = strings.TrimLeft(s, "0")
	if s == "" {
		return "0"
	}
	return s
}

func TestQueryAgainShape(t *testing.T) {
	assert.NotEqual(t, Query, QueryAgain)
	assert.NotContains(t, QueryAgain, "pg_control_system()", "no control file read for what cannot change on one connection")
	assert.NotContains(t, QueryAgain, "pg_postmaster_start_time()")
	assert.Contains(t, QueryAgain, "NULL::text AS system")
	assert.Contains(t, QueryAgain, "NULL::text AS started")
	assert.Equal(t, strings.Count(Query, " AS "), strings.Count(QueryAgain, " AS "), "the same columns")
}
