package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// InstallManifests is the kustomization users apply to install smr-cri (kubectl apply -k
// manifests/), relative to the repository.
const InstallManifests = "manifests"

// InstallRBACFiles lists, in kustomization order, the files of InstallManifests that hold no
// DaemonSet: the namespace, the ServiceAccount and every Role/ClusterRole and binding
// `smr-cri serve` relies on (pod discovery, events, the raft CA Secret smr-system/smr-cri-ca).
// The DaemonSet is left out: it installs serve on systemd nodes, and this cluster runs serve
// itself. Reading the list from the kustomization keeps the cluster on exactly the RBAC the
// install path applies, whatever file a new permission lands in.
func InstallRBACFiles(repoRoot string) ([]string, error) {
	dir := filepath.Join(repoRoot, InstallManifests)
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, fmt.Errorf("cluster: install RBAC: %w", err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("cluster: install RBAC: %s/kustomization.yaml: %w", dir, err)
	}
	var files []string
	for _, r := range k.Resources {
		path := filepath.Join(dir, r)
		kinds, err := manifestKinds(path)
		if err != nil {
			return nil, fmt.Errorf("cluster: install RBAC: resource %q of %s/kustomization.yaml: %w", r, dir, err)
		}
		if !slices.Contains(kinds, "DaemonSet") {
			files = append(files, path)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("cluster: install RBAC: %s/kustomization.yaml lists no resource besides the DaemonSet", dir)
	}
	return files, nil
}

// manifestKinds returns the kind of every YAML document in the file (a plain file: kustomize
// directories and URLs are not expected in manifests/).
func manifestKinds(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var kinds []string
	for i, doc := range strings.Split("\n"+string(b), "\n---") {
		var obj struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if obj.Kind == "" {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue // empty document (a leading or trailing ---)
			}
			return nil, fmt.Errorf("document %d has no kind", i+1)
		}
		kinds = append(kinds, obj.Kind)
	}
	if len(kinds) == 0 {
		return nil, errors.New("no object in it")
	}
	return kinds, nil
}

// stripComments drops YAML comment lines.
func stripComments(doc string) string {
	var keep []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// ApplyInstallRBAC applies InstallRBACFiles with the admin kubeconfig, so that the nodes'
// `smr-cri serve` (user SmrCRIUser) has the permissions it has on kind or minikube, the raft CA
// Secret included. Idempotent.
func (c Config) ApplyInstallRBAC(ctx context.Context) error {
	files, err := InstallRBACFiles(c.RepoRoot)
	if err != nil {
		return err
	}
	args := []string{"apply"}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	_, err = c.Kubectl(ctx, args...)
	return err
}

// TraceOverlay is the kustomize overlay (relative to the repository) that runs the project's
// DaemonSet on this cluster: manifests/ without the systemd installer, its trace container
// mounting only its node's trace directory (smr-cri's log and socket). Its hostPath is the
// placeholder TraceOverlayPlaceholder, replaced by WriteTraceOverlay with the state
// directory's trace root.
const (
	TraceOverlay            = "hack/cluster/manifests"
	TraceOverlayPlaceholder = "/var/lib/smr-cluster/trace"
)

// WriteTraceOverlay writes into dir a kustomization of TraceOverlay whose hostPath is this
// cluster's trace root, <state>/trace (an absolute path that differs per checkout, so it is not committed).
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
        value: ` + strconv.Quote(c.traceRoot()) + `
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
