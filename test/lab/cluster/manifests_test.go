package cluster

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
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
			`value: /var/lib/smr-cluster/trace`, `value: "/srv/smr state/trace"`, "op: test", "name: smr-cri, namespace: smr-system"}},
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

// The committed overlay keeps the placeholder WriteTraceOverlay's JSON patch tests for, and its
// trace container sees nothing of the state directory but its own node's trace directory: one
// hostPath volume (the trace root), mounted read-only through subPathExpr $(NODE_NAME), and
// every path in its arguments inside that mount.
func TestTraceOverlayMountsOnlyTheNodesTraceDir(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", TraceOverlay, "daemonset-patch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ops []struct {
		Op    string          `json:"op"`
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value"`
	}
	if err := yaml.Unmarshal(b, &ops); err != nil {
		t.Fatalf("daemonset-patch.yaml: %v", err)
	}
	value := func(path string, into any) {
		t.Helper()
		for _, op := range ops {
			if op.Path == path && op.Op == "replace" {
				if err := json.Unmarshal(op.Value, into); err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				return
			}
		}
		t.Fatalf("daemonset-patch.yaml does not replace %s", path)
	}
	var volumes []struct {
		Name     string            `json:"name"`
		HostPath map[string]string `json:"hostPath"`
	}
	value("/spec/template/spec/volumes", &volumes)
	if len(volumes) != 1 || volumes[0].HostPath["path"] != TraceOverlayPlaceholder || volumes[0].HostPath["type"] != "Directory" {
		t.Fatalf("volumes = %+v, want only hostPath %s (type Directory)", volumes, TraceOverlayPlaceholder)
	}
	var mounts []struct {
		Name, MountPath, SubPathExpr string
		ReadOnly                     bool
	}
	value("/spec/template/spec/containers/0/volumeMounts", &mounts)
	if len(mounts) != 1 || mounts[0].Name != volumes[0].Name || mounts[0].SubPathExpr != "$(NODE_NAME)" || !mounts[0].ReadOnly {
		t.Fatalf("volumeMounts = %+v, want only %s, read-only, subPathExpr $(NODE_NAME)", mounts, volumes[0].Name)
	}
	var args []string
	value("/spec/template/spec/containers/0/args", &args)
	for i, a := range args {
		if (a == "--file" || a == "--socket") && (i+1 == len(args) || !strings.HasPrefix(args[i+1], mounts[0].MountPath+"/")) {
			t.Errorf("trace %s outside the mount %s: %q", a, mounts[0].MountPath, args)
		}
	}
}

// The cluster applies the install path's namespace and RBAC, the CA Secret's Role included,
// and never the systemd installer DaemonSet.
func TestInstallRBACFilesOfTheRepo(t *testing.T) {
	files, err := InstallRBACFiles(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	for _, want := range []string{"namespace.yaml", "rbac.yaml", "pki-rbac.yaml"} {
		if !slices.Contains(names, want) {
			t.Errorf("InstallRBACFiles = %v, lacks %s", names, want)
		}
	}
	if slices.Contains(names, "daemonset.yaml") {
		t.Errorf("InstallRBACFiles = %v, includes the installer DaemonSet", names)
	}
	if names[0] != "namespace.yaml" {
		t.Errorf("InstallRBACFiles = %v: the namespace must come first", names)
	}
}

func TestInstallRBACFilesBadInput(t *testing.T) {
	const (
		ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: smr-system}\n"
		ds = "# the installer\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: smr-cri}\n"
	)
	for _, tc := range []struct {
		name    string
		files   map[string]string // under manifests/
		want    []string
		wantErr string
	}{
		{"ok: comments, --- separators, a DaemonSet left out", map[string]string{
			"kustomization.yaml": "resources: [ns.yaml, ds.yaml, rbac.yaml]\n",
			"ns.yaml":            "# header\n---\n" + ns,
			"ds.yaml":            ds,
			"rbac.yaml":          "kind: Role\n---\n# second\nkind: RoleBinding\n---\n",
		}, []string{"ns.yaml", "rbac.yaml"}, ""},
		{"no kustomization", map[string]string{"ns.yaml": ns}, nil, "kustomization.yaml: no such file"},
		{"kustomization not YAML", map[string]string{"kustomization.yaml": "resources: [a\n"}, nil, "kustomization.yaml"},
		{"missing resource", map[string]string{"kustomization.yaml": "resources: [gone.yaml]\n"}, nil, `resource "gone.yaml"`},
		{"document without kind", map[string]string{
			"kustomization.yaml": "resources: [x.yaml]\n", "x.yaml": ns + "---\nmetadata: {name: y}\n"}, nil, "document 2 has no kind"},
		{"empty resource", map[string]string{
			"kustomization.yaml": "resources: [x.yaml]\n", "x.yaml": "# nothing\n"}, nil, "no object in it"},
		{"only the DaemonSet", map[string]string{
			"kustomization.yaml": "resources: [ds.yaml]\n", "ds.yaml": ds}, nil, "no resource besides the DaemonSet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := t.TempDir()
			dir := filepath.Join(repo, InstallManifests)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, body := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			files, err := InstallRBACFiles(repo)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error containing %q, got %v (files %v)", tc.wantErr, err, files)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, f := range tc.want {
				want = append(want, filepath.Join(dir, f))
			}
			if !slices.Equal(files, want) {
				t.Fatalf("files = %v, want %v", files, want)
			}
		})
	}
}
