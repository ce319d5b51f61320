package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// TraceOverlay is the kustomize overlay (relative to the repository) that runs the project's
// DaemonSet on this cluster: manifests/ without the systemd installer, its trace container
// reading the node's smr-cri log from the state directory. Its hostPath is the placeholder
// TraceOverlayPlaceholder, replaced by WriteTraceOverlay.
const (
	TraceOverlay            = "hack/cluster/manifests"
	TraceOverlayPlaceholder = "/var/lib/smr-cluster"
)

// WriteTraceOverlay writes into dir a kustomization of TraceOverlay whose hostPath is this
// cluster's state directory (an absolute path that differs per checkout, so it is not committed).
// `kubectl apply -k dir` then installs it.
func (c Config) WriteTraceOverlay(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("cluster: trace overlay: %w", err)
	}
	if !filepath.IsAbs(c.Dir) || !filepath.IsAbs(c.RepoRoot) {
		return fmt.Errorf("cluster: trace overlay: state dir %q and repo root %q must be absolute (Resolve the config)", c.Dir, c.RepoRoot)
	}
	base := filepath.Join(c.RepoRoot, TraceOverlay)
	if _, err := os.Stat(filepath.Join(base, "kustomization.yaml")); err != nil {
		return fmt.Errorf("cluster: trace overlay: %w", err)
	}
	// kustomize takes only relative resource paths.
	rel, err := filepath.Rel(dir, base)
	if err != nil {
		return fmt.Errorf("cluster: trace overlay: %w", err)
	}
	// strconv.Quote gives a valid YAML double-quoted scalar for any path.
	k := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ` + strconv.Quote(rel) + `
patches:
  - target: {group: apps, version: v1, kind: DaemonSet, name: smr-cri, namespace: smr-system}
    patch: |-
      - op: test
        path: /spec/template/spec/volumes/0/hostPath/path
        value: ` + TraceOverlayPlaceholder + `
      - op: replace
        path: /spec/template/spec/volumes/0/hostPath/path
        value: ` + strconv.Quote(c.Dir) + `
`
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		return fmt.Errorf("cluster: trace overlay: %w", err)
	}
	return nil
}

// ApplyTraceDaemonSet applies TraceOverlay (namespace, RBAC and the DaemonSet smr-system/smr-cri)
// with this cluster's state directory; extra kubectl apply flags (e.g. --dry-run=server) follow.
func (c Config) ApplyTraceDaemonSet(ctx context.Context, flags ...string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "smr-trace-overlay-")
	if err != nil {
		return nil, fmt.Errorf("cluster: trace overlay: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := c.WriteTraceOverlay(dir); err != nil {
		return nil, err
	}
	return c.Kubectl(ctx, append([]string{"apply", "-k", dir}, flags...)...)
}
