// Package testcheck holds assertions shared by table-driven tests of several
// packages.
package testcheck

import (
	"strings"
	"testing"
)

// ErrorCase reports whether want names an error case of a table row; if so
// it fails tb unless err is non-nil and its message contains want. Rows with
// an empty want go on to check the result.
func ErrorCase(tb testing.TB, what string, err error, want string) bool {
	tb.Helper()
	if want == "" {
		return false
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		tb.Fatalf("%s error = %v, want one containing %q", what, err, want)
	}
	return true
}
