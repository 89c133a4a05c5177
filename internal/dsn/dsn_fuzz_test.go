package dsn

import (
	"slices"
	"strings"
	"testing"
)

// FuzzSplit checks, for any input: no panic; a split reassembles
// (checkReassembly); and the password is found as a secret and never
// appears in an error. For the password check the fuzzed text is put after
// a leading password=... pair (keyword/value) and after a
// postgres://u:password@ userinfo (URL), where libpq's syntax puts the
// password in the password position whatever follows.
//
// The seed corpus is the table of TestSplit, which holds the DSNs of the
// driver's configuration tests, and SyntaxCorners.
func FuzzSplit(f *testing.F) {
	for _, tc := range splitCases {
		f.Add(tc.in)
	}
	for _, s := range SyntaxCorners {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, s string) {
		p, err := Split(s, stripUnified)
		if err == nil {
			checkReassembly(t, s, p)
		}
		if strings.Contains(s, testPassword) {
			return
		}
		checkPasswordKept(t, "password="+testPassword+" "+s)
		after, _ := CutScheme(s)
		checkPasswordKept(t, "postgres://u:"+testPassword+"@"+after)
	})
}

// checkPasswordKept splits s, which holds testPassword in a password
// position and nowhere else: the password is among the secrets, and not
// in the error.
func checkPasswordKept(t *testing.T, s string) {
	t.Helper()
	p, err := Split(s, stripUnified)
	if err != nil && strings.Contains(err.Error(), testPassword) {
		t.Fatalf("Split(%q): error contains the password: %v", s, err)
	}
	if !slices.Contains(p.Secrets, testPassword) {
		t.Fatalf("Split(%q): secrets %q lack the password", s, p.Secrets)
	}
	if err == nil {
		checkReassembly(t, s, p)
	}
}
