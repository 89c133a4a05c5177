// Package sqlop names the operation of a SQL statement for the
// db.operation.name attribute of OpenTelemetry's database conventions: the
// statement's first keyword, upper-cased (SELECT, INSERT, WITH, VACUUM).
//
// It is a lexer of the statement's start only: it skips white space,
// opening parentheses and comments (-- to the end of the line, /* */
// nested), and takes the run of ASCII letters that follows. It does not
// parse SQL, so it names "WITH x AS (DELETE ...) SELECT" WITH, and it
// never looks past the first word.
//
// First words come from user SQL, so the number of names is bounded: the
// first words of PostgreSQL's commands are always named, other words up to
// 64 per [Names], then [Other].
package sqlop

import (
	"strings"

	"github.com/unifiedsql/unified/internal/cowmap"
)

// Other is the name of an operation beyond the bound, or of a first word
// too long to be a command: the conventions' value for "none of the known
// ones".
const Other = "_OTHER"

// The driver's operations that run no SQL of the caller's, spelled as in
// unified.NodeError.Op, and named BEGIN, COMMIT, ROLLBACK, PREPARE and
// PING whatever the query text.
const (
	Prepare  = "prepare"
	Begin    = "begin"
	Commit   = "commit"
	Rollback = "rollback"
	Ping     = "ping"
)

const (
	maxNames      = 64 // first words kept beyond the PostgreSQL commands
	maxKeywordLen = 16 // longer first words are not commands: Other
)

// commands are the first words of PostgreSQL's SQL commands, and the names
// the driver gives its own operations.
var commands = func() map[string]string {
	m := map[string]string{}
	for _, w := range strings.Fields(`ABORT ALTER ANALYZE BEGIN CALL CHECKPOINT CLOSE CLUSTER
		COMMENT COMMIT COPY CREATE DEALLOCATE DECLARE DELETE DISCARD DO DROP END EXECUTE
		EXPLAIN FETCH GRANT IMPORT INSERT LISTEN LOAD LOCK MERGE MOVE NOTIFY PREPARE
		REASSIGN REFRESH REINDEX RELEASE RESET REVOKE ROLLBACK SAVEPOINT SECURITY SELECT
		SET SHOW START TABLE TRUNCATE UNLISTEN UPDATE VACUUM VALUES WITH PING`) {
		m[w] = w
	}
	return m
}()

// Names turns statements into operation names. It keeps the first words
// that are not PostgreSQL commands (a statement the server will reject,
// another node driver's dialect) up to 64, so that a name is one string
// however often it is seen; past that, such words are named [Other]. Make
// one with [NewNames]; it is safe for concurrent use, and naming a
// statement whose name is known allocates nothing.
type Names struct {
	extra *cowmap.Map[string, string]
}

// NewNames returns a Names that knows only the PostgreSQL commands.
func NewNames() *Names {
	return &Names{extra: cowmap.New[string, string](maxNames)}
}

// Operation returns the name of an operation: for op [Begin], [Commit],
// [Rollback], [Ping] and [Prepare] the upper-cased op, whatever query
// holds; for any other op the first keyword of query, upper-cased ("" when
// query has none: it is empty, all comment, or starts with something other
// than a letter), or [Other] when the word is longer than 16 letters (no
// command is), or is not a command and the bound of other words is
// reached.
func (n *Names) Operation(op, query string) string {
	switch op {
	case Begin:
		return "BEGIN"
	case Commit:
		return "COMMIT"
	case Rollback:
		return "ROLLBACK"
	case Ping:
		return "PING"
	case Prepare:
		return "PREPARE"
	}
	var buf [maxKeywordLen]byte
	l, ok := firstKeyword(query, &buf)
	if !ok {
		return Other
	}
	if l == 0 {
		return ""
	}
	if name, ok := commands[string(buf[:l])]; ok {
		return name
	}
	name, kept := n.extra.Get(string(buf[:l]), func() (string, string) {
		name := string(buf[:l])
		return name, name
	})
	if !kept {
		return Other
	}
	return name
}

// firstKeyword writes the first word of query, upper-cased, into buf and
// returns its length: leading white space, '(' and comments (-- to the end
// of the line, nested /* */) are skipped, and the word is the run of ASCII
// letters that follows (0 when it starts with anything else). ok is false
// when the word does not fit in buf.
func firstKeyword(query string, buf *[maxKeywordLen]byte) (n int, ok bool) {
	i := 0
	for i < len(query) {
		c := query[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' || c == '(':
			i++
		case c == '-' && i+1 < len(query) && query[i+1] == '-':
			j := strings.IndexByte(query[i:], '\n')
			if j < 0 {
				return 0, true
			}
			i += j + 1
		case c == '/' && i+1 < len(query) && query[i+1] == '*':
			i += 2
			for depth := 1; depth > 0; {
				if i+1 >= len(query) {
					return 0, true // unterminated
				}
				switch {
				case query[i] == '/' && query[i+1] == '*':
					depth++
					i += 2
				case query[i] == '*' && query[i+1] == '/':
					depth--
					i += 2
				default:
					i++
				}
			}
		default:
			for ; i < len(query); i++ {
				c := query[i]
				if 'a' <= c && c <= 'z' {
					c -= 'a' - 'A'
				} else if c < 'A' || c > 'Z' {
					break
				}
				if n == len(buf) {
					return 0, false
				}
				buf[n] = c
				n++
			}
			return n, true
		}
	}
	return 0, true
}
