package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// serve's defaults turn raft mutual TLS on (cluster CA in DefaultPKIDir, or
// --pki-dir); --insecure-raft turns it off with a WARN line. The CA itself
// is read at the first attach (internal/daemon TestBadPKIDirFailsAttach), so
// starting replication touches no CA directory.
func TestServeRaftSecurity(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantDir  string // "" : no CA (plaintext)
		wantLog  string
		wantWarn bool
	}{
		{"defaults", nil, DefaultPKIDir, `raftSecurity="mutual TLS, CA in ` + DefaultPKIDir + `"`, false},
		{"pki dir", []string{"--pki-dir", "/srv/pki"}, "/srv/pki", `raftSecurity="mutual TLS, CA in /srv/pki"`, false},
		{"insecure raft", []string{"--insecure-raft"}, "", `raftSecurity="plaintext (--insecure-raft)"`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{"--data-dir", filepath.Join(dir, "data"), "--trace-file", filepath.Join(dir, "trace"),
				"--runtime-endpoint", "unix://" + filepath.Join(dir, "no-runtime.sock"), "--shutdown-timeout", "5s"}, tc.args...)
			o, err := parseServe(args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&lockedWriter{w: &buf}, nil))
			ca := raftCA(o.Replication, log)
			switch {
			case tc.wantDir == "" && ca != nil:
				t.Fatalf("CA %+v with --insecure-raft, want none", ca)
			case tc.wantDir != "" && (ca == nil || ca.Dir != tc.wantDir || ca.Store != nil):
				t.Fatalf("CA %+v, want one over %s", ca, tc.wantDir)
			}
			_, stop, err := startReplication(context.Background(), o, log, nil, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			stop()
			out := buf.String()
			if !strings.Contains(out, tc.wantLog) {
				t.Errorf("log lacks %s:\n%s", tc.wantLog, out)
			}
			warned := strings.Contains(out, `level=WARN msg="INSECURE: raft traffic is plaintext and unauthenticated (--insecure-raft)`)
			if warned != tc.wantWarn {
				t.Errorf("INSECURE warning logged = %v, want %v:\n%s", warned, tc.wantWarn, out)
			}
		})
	}
}
