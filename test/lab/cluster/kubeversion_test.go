package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// kubeVersionScript is sourced by both Kubernetes builds (hack/install-deps.sh for kubelet,
// hack/cluster/build-kube.sh for the rest) so that every node reports KubeVersion.
var kubeVersionScript = filepath.Join("..", "..", "..", "hack", "cluster", "kube-version.sh")

// sourced runs a bash snippet after sourcing kubeVersionScript; args are its $2, $3, ...
func sourced(t *testing.T, snippet string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("bash", append([]string{"-c", `set -eu; source "$1"; ` + snippet, "bash", kubeVersionScript}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestKubeVersionScript(t *testing.T) {
	out, err := sourced(t, `echo "$KUBE_VERSION"; echo "$KUBE_BUILD"; echo "$KUBE_LDFLAGS"`)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	lines := strings.Split(out, "\n")
	if len(lines) != 3 || lines[0] != KubeVersion || !strings.HasPrefix(lines[1], KubeVersion+" ") {
		t.Fatalf("KUBE_VERSION, KUBE_BUILD = %q, want %s (cluster.KubeVersion) and a build id starting with it", lines, KubeVersion)
	}
	// v1.37.2 -> gitMajor=1 gitMinor=37, for the packages kubelet, kubectl and the control plane
	// take their version from.
	major, rest, _ := strings.Cut(strings.TrimPrefix(KubeVersion, "v"), ".")
	minor, _, _ := strings.Cut(rest, ".")
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		for _, kv := range []string{"gitVersion=" + KubeVersion, "gitMajor=" + major, "gitMinor=" + minor, "gitTreeState=clean"} {
			if !strings.Contains(" "+lines[2]+" ", " -X "+pkg+"."+kv+" ") {
				t.Errorf("KUBE_LDFLAGS lacks -X %s.%s: %s", pkg, kv, lines[2])
			}
		}
	}
	// Both builds use it: the kubelet is linked like the control plane.
	for _, script := range []string{"hack/install-deps.sh", "hack/cluster/build-kube.sh"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "..", script))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`source "$ROOT/hack/cluster/kube-version.sh"`, `-ldflags "$KUBE_LDFLAGS"`, "kube_reports_version"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s lacks %s", script, want)
			}
		}
	}
}

// A cached binary is kept only when it reports KubeVersion; anything else is rebuilt.
func TestKubeReportsVersion(t *testing.T) {
	dir := t.TempDir()
	fake := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, bin string
		want      bool
	}{
		{"kubelet built with the flags", fake("good", `echo "Kubernetes `+KubeVersion+`"`), true},
		{"kubectl (version --client)", fake("kubectl", `[ "$1" = version ] || { echo "unknown flag: $1" >&2; exit 1; }
printf 'Client Version: `+KubeVersion+`\nKustomize Version: v5.7.1\n'`), true},
		{"built without the flags", fake("master", `echo 'Kubernetes v0.0.0-master+$Format:%H$'`), false},
		{"another release with the same prefix", fake("longer", `echo "Kubernetes `+KubeVersion+`0"`), false},
		{"fails", fake("fails", `echo "Kubernetes `+KubeVersion+`"; exit 2`), false},
		{"missing", filepath.Join(dir, "missing"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := sourced(t, `kube_reports_version "$2" && echo yes || echo no`, tc.bin)
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if got := out == "yes"; got != tc.want {
				t.Fatalf("kube_reports_version %s = %v (%s), want %v", tc.bin, got, out, tc.want)
			}
		})
	}
}
