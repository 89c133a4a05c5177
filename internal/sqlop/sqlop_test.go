package sqlop

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var operationCases = []struct {
	name, op, query, want string // want "": no name
}{
	{"select", "exec", "SELECT 1", "SELECT"},
	{"lower case", "query", "select 1", "SELECT"},
	{"mixed case", "query", "SeLeCt 1", "SELECT"},
	{"leading white space", "exec", " \t\r\n\f\vupdate t set a = 1", "UPDATE"},
	{"line comments", "exec", "-- a comment\n  -- another\ninsert into t values (1)", "INSERT"},
	{"block comment", "exec", "/* c */delete from t", "DELETE"},
	{"nested block comment", "query", "/* outer /* nested */ still comment */ WITH x AS (SELECT 1) SELECT * FROM x", "WITH"},
	{"opening parentheses", "query", "((SELECT 1)) UNION (SELECT 2)", "SELECT"},
	{"word ends at a non-letter", "query", "select*from t", "SELECT"},
	{"only the first word", "exec", "VACUUM ANALYZE t", "VACUUM"},
	{"begin as text", "exec", "begin", "BEGIN"},
	{"not a command", "exec", "notacommand 1", "NOTACOMMAND"},
	{"16 letters", "exec", "abcdefghijklmnop x", "ABCDEFGHIJKLMNOP"},
	{"17 letters", "exec", "averyveryverylongfirstword x", Other},
	{"empty", "exec", "", ""},
	{"white space", "exec", "   ", ""},
	{"only a comment", "exec", "-- only a comment", ""},
	{"comment then nothing", "exec", "-- c\n", ""},
	{"unterminated block comment", "exec", "/* unterminated", ""},
	{"unterminated nested block comment", "exec", "/* a /* b */ SELECT", ""},
	{"digit first", "exec", "1 + 1", ""},
	{"non-ascii letter", "exec", "élan", ""},
	{"placeholder", "exec", "$1", ""},
	{"lone dash and slash", "exec", "- /", ""},
	{"begin", Begin, "", "BEGIN"},
	{"commit", Commit, "COMMIT", "COMMIT"},
	{"rollback", Rollback, "", "ROLLBACK"},
	{"ping", Ping, "", "PING"},
	{"prepare names the operation, not the statement", Prepare, "SELECT 1", "PREPARE"},
}

func TestOperation(t *testing.T) {
	n := NewNames()
	for _, tc := range operationCases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, n.Operation(tc.op, tc.query))
		})
	}
}

// TestOperationBound: first words that are not commands are kept up to 64
// per Names; past that they are Other, while commands and the words kept
// are still named.
func TestOperationBound(t *testing.T) {
	n := NewNames()
	for i := range 100 {
		word := fmt.Sprintf("zz%c%c", 'a'+i/26, 'a'+i%26)
		want := strings.ToUpper(word)
		if i >= maxNames {
			want = Other
		}
		assert.Equal(t, want, n.Operation("exec", word+" x"), "word %d", i)
	}
	assert.Equal(t, "SELECT", n.Operation("exec", "select 1"))
	assert.Equal(t, "ZZAA", n.Operation("exec", "zzaa"))
	assert.Equal(t, Other, n.Operation("exec", "zzzz"))
	assert.Equal(t, "ZZZZ", NewNames().Operation("exec", "zzzz"), "the bound is per Names")
}

// TestOperationAllocatesNothing: naming a command, or a word already kept,
// allocates nothing.
func TestOperationAllocatesNothing(t *testing.T) {
	n := NewNames()
	n.Operation("exec", "notacommand")
	allocs := testing.AllocsPerRun(100, func() {
		if n.Operation("query", "/* c */ select 1") != "SELECT" || n.Operation("exec", "NotACommand 2") != "NOTACOMMAND" {
			t.Fatal("wrong name")
		}
	})
	assert.Zero(t, allocs)
}

// TestOperationConcurrent: under -race, many goroutines naming overlapping
// words get the same names.
func TestOperationConcurrent(t *testing.T) {
	n := NewNames()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				word := fmt.Sprintf("w%c", 'a'+(w+i)%20)
				if got := n.Operation("exec", word); got != strings.ToUpper(word) {
					t.Errorf("Operation(%q) = %q", word, got)
				}
			}
		})
	}
	wg.Wait()
}

// FuzzOperation: no panic, and a name is "", Other or at most 16 upper-case
// letters.
func FuzzOperation(f *testing.F) {
	for _, tc := range operationCases {
		f.Add(tc.query)
	}
	n := NewNames()
	f.Fuzz(func(t *testing.T, query string) {
		name := n.Operation("exec", query)
		if name == "" || name == Other {
			return
		}
		if len(name) > maxKeywordLen || strings.Trim(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
			t.Fatalf("Operation(%q) = %q", query, name)
		}
	})
}
