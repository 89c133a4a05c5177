package dsn

// SyntaxCorners are DSNs at the edges of libpq's syntax (empty values,
// lone quotes and backslashes, empty query parameters, IPv6 and empty
// hosts, unified_* keys in odd spellings). They seed the fuzz targets of
// this package (FuzzSplit) and of the driver (FuzzParseConfig), which
// both read DSNs through Split.
var SyntaxCorners = []string{
	"", " ", "=", "'", `\`, "host=", "postgres://", "postgresql://[",
	"postgres://h/d?&", "postgres://h/d?unified_retry_max=1&", "postgres://@/?",
	"postgres://[::1]?unified_retry_max=2", "host='a b' unified_retry_max='2'",
	"unified_=1", "Unified_Retry_Max=2", "target_session_attrs=",
	"postgres://h:1,:2,[::1]:3/d?port=4", "port=1,,2 port=", `a=\`, `a='\''`,
}
