package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSetAsideStaleLog(t *testing.T) {
	const group = "default.redis"
	tests := []struct {
		name      string
		owner     string // "" = no owner file
		log       bool   // a raft log directory exists
		uid       string
		wantAside bool
		wantLog   bool // the raft log is still in place afterwards
	}{
		{"new directory", "", false, "u2", false, false},
		{"same StatefulSet: resumed", "u2", true, "u2", false, true},
		{"written before owners were recorded: adopted", "", true, "u2", false, true},
		{"re-created StatefulSet: set aside", "u1", true, "u2", true, false},
		{"re-created, no log yet", "u1", false, "u2", false, false},
		{"no StatefulSet: untouched", "u1", true, "", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.owner != "" {
				if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(tc.owner+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if tc.log {
				if err := os.MkdirAll(filepath.Join(dir, group, "wal"), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			aside, err := setAsideStaleLog(dir, group, tc.uid)
			if err != nil {
				t.Fatal(err)
			}
			if (aside != "") != tc.wantAside {
				t.Fatalf("set aside %q, want %v", aside, tc.wantAside)
			}
			if aside != "" {
				if _, err := os.Stat(filepath.Join(aside, "wal")); err != nil {
					t.Fatalf("the stale log is not kept at %s: %v", aside, err)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, group)); (err == nil) != tc.wantLog {
				t.Fatalf("raft log in place: %v, want %v", err == nil, tc.wantLog)
			}
			if tc.uid != "" {
				if b, _ := os.ReadFile(filepath.Join(dir, ownerFile)); string(b) != tc.uid+"\n" {
					t.Fatalf("owner %q, want %s", b, tc.uid)
				}
			}
		})
	}
	// An unreadable owner is an error that changes nothing.
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, ownerFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := setAsideStaleLog(dir, group, "u2"); err == nil {
		t.Fatal("an owner that cannot be read was accepted")
	}
}
