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

func TestSkipUnlessIntegration(t *testing.T) {
	for _, tt := range []struct {
		env      string
		wantSkip bool
	}{{"", true}, {"0", true}, {"true", true}, {"1", false}} {
		t.Run("env="+tt.env, func(t *testing.T) {
			t.Setenv(IntegrationEnv, tt.env)
			ran := false
			t.Run("inner", func(t *testing.T) {
				SkipUnlessIntegration(t, "nothing")
				ran = true
			})
			if ran == tt.wantSkip {
				t.Fatalf("%s=%q: body ran = %v, want %v", IntegrationEnv, tt.env, ran, !tt.wantSkip)
			}
		})
	}
}
