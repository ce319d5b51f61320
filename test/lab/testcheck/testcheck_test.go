package testcheck

import (
	"errors"
	"testing"
)

func TestErrorCase(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		want    string
		isError bool
	}{
		{"no error expected", nil, "", false},
		{"error expected and matching", errors.New("bad port 0"), "bad port", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ErrorCase(t, "op", tc.err, tc.want); got != tc.isError {
				t.Fatalf("ErrorCase = %v, want %v", got, tc.isError)
			}
		})
	}
}
