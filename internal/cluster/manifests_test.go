package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The overlay written for a cluster points kustomize at the committed overlay by a relative path
// (kustomize refuses absolute ones) and replaces the placeholder hostPath with the state dir.
func TestWriteTraceOverlay(t *testing.T) {
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, TraceOverlay), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, TraceOverlay, "kustomization.yaml"), []byte("resources: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
		want    []string
	}{
		{"ok", Config{Dir: "/srv/smr state", RepoRoot: repo}, "", []string{
			`value: /var/lib/smr-cluster`, `value: "/srv/smr state"`, "op: test", "name: smr-cri, namespace: smr-system"}},
		{"relative state dir", Config{Dir: "_out/cluster", RepoRoot: repo}, "must be absolute", nil},
		{"relative repo root", Config{Dir: "/srv/x", RepoRoot: "main"}, "must be absolute", nil},
		{"no overlay in the repo", Config{Dir: "/srv/x", RepoRoot: t.TempDir()}, "kustomization.yaml", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.WriteTraceOverlay(out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(out, "kustomization.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(out, filepath.Join(repo, TraceOverlay))
			for _, w := range append(tc.want, `- "`+rel+`"`) {
				if !strings.Contains(string(b), w) {
					t.Errorf("kustomization lacks %q:\n%s", w, b)
				}
			}
		})
	}
}

// The committed overlay keeps the placeholder WriteTraceOverlay's JSON patch tests for.
func TestTraceOverlayPlaceholder(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", TraceOverlay, "daemonset-patch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "path: "+TraceOverlayPlaceholder+",") {
		t.Fatalf("%s/daemonset-patch.yaml lacks the hostPath placeholder %s", TraceOverlay, TraceOverlayPlaceholder)
	}
}
