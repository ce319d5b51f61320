package cmdmain

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestReport(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		wantCode int
		wantOut  string
	}{
		{"success", nil, 0, ""},
		{"error", errors.New("no such node"), 1, "lab: no such node\n"},
		{"wrapped error", fmt.Errorf("up: %w", errors.New("etcd died")), 1, "lab: up: etcd died\n"},
		{"quiet: the command printed its own message", ErrQuiet, 1, ""},
		{"quiet, wrapped", fmt.Errorf("critest-report: %w", ErrQuiet), 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := Report("lab", tc.err, &out); code != tc.wantCode || out.String() != tc.wantOut {
				t.Fatalf("Report = %d, %q; want %d, %q", code, out.String(), tc.wantCode, tc.wantOut)
			}
		})
	}
}
