package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// Bad command lines fail before anything is started or locked.
func TestRunBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "usage: cluster up|down"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"extra argument", []string{"up", "now"}, `unexpected arguments ["now"]`},
		{"unknown flag", []string{"down", "--force"}, "flag provided but not defined: -force"},
		{"bad node count", []string{"env", "--nodes", "10"}, "node count 10 out of range 1..9"},
		{"node count not a number", []string{"up", "--nodes", "three"}, `invalid value "three"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), tc.args, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}
