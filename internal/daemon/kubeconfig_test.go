package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/freeport"
)

const testKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:1
users:
- name: u
  user:
    token: t
contexts:
- name: x
  context:
    cluster: c
    user: u
current-context: x
`

// serve starts before the DaemonSet writes the kubeconfig: New accepts a
// missing file, an attach that needs the API server fails naming the file,
// and once the file is there the next attach loads it.
func TestKubeconfigLoadedLazily(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kube", "kubeconfig")
	ld := newLoopbackDaemonWithConfig(t, t.TempDir(), newCounterApp(t), func(c *Config) { c.Kubeconfig = kc })
	defer ld.Close(context.Background())
	pod := onePod("sb-kube", freeport.PortT(t))
	delete(pod.Annotations, podcontract.AnnotationPeers)
	pod.Annotations[podcontract.AnnotationMembership] = podcontract.MembershipKubernetes
	err := ld.AttachPod(context.Background(), pod)
	if err == nil || !strings.Contains(err.Error(), "kubeconfig "+kc+" is not readable yet") {
		t.Fatalf("attach before the kubeconfig exists: %v, want an error naming %s", err, kc)
	}
	if len(ld.Attached()) != 0 {
		t.Fatalf("attached %v after a failed attach", ld.Attached())
	}
	if err := os.MkdirAll(filepath.Dir(kc), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kc, []byte(testKubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if disc, err := ld.discovery(); err != nil || disc == nil {
		t.Fatalf("discovery after the kubeconfig appeared: %v", err)
	}
}

func TestKubeconfigBadInput(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken")
	if err := os.WriteFile(broken, []byte("clusters: [unclosed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, kubeconfig, wantNew, wantAttach string
	}{
		{name: "no kubeconfig", wantAttach: "start smr-cri serve with --kubeconfig"},
		{name: "missing file", kubeconfig: filepath.Join(dir, "missing"), wantAttach: "is not readable yet"},
		{name: "broken file", kubeconfig: broken, wantNew: "kubeconfig " + broken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(Config{DataDir: t.TempDir(), Intercept: &nopInterceptor{}, Kubeconfig: tc.kubeconfig})
			if tc.wantNew != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantNew) {
					t.Fatalf("New: %v, want %q", err, tc.wantNew)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.discovery(); err == nil || !strings.Contains(err.Error(), tc.wantAttach) ||
				!strings.Contains(err.Error(), "smr.io/membership=kubernetes needs the API server") {
				t.Fatalf("discovery: %v, want %q", err, tc.wantAttach)
			}
		})
	}
}
