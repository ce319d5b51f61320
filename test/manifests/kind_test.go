package manifests

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"

	"github.com/smr-io/smr-cri/internal/install"
)

// TestKindConfig decodes hack/kind-config.yaml strictly with kind's own
// v1alpha4 types (as `kind create cluster --config` does) and checks the
// shape and the KubeletConfiguration patch install relies on.
func TestKindConfig(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repo, "hack/kind-config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c v1alpha4.Cluster
	if err := strictUnmarshal(data, &c); err != nil {
		t.Fatalf("hack/kind-config.yaml: %v", err)
	}
	if c.Kind != "Cluster" || c.APIVersion != "kind.x-k8s.io/v1alpha4" {
		t.Errorf("kind/apiVersion %q/%q", c.Kind, c.APIVersion)
	}
	roles := map[v1alpha4.NodeRole]int{}
	for _, n := range c.Nodes {
		roles[n.Role]++
	}
	if roles[v1alpha4.ControlPlaneRole] != 1 || roles[v1alpha4.WorkerRole] != 3 || len(c.Nodes) != 4 {
		t.Errorf("nodes %+v: want 1 control-plane and 3 workers", c.Nodes)
	}
	// The patch must be a KubeletConfiguration that pins kubelet's runtime
	// endpoint where install looks first, and healthz where install checks.
	found := false
	for _, p := range c.KubeadmConfigPatches {
		var kc struct {
			Kind                     string `json:"kind"`
			ContainerRuntimeEndpoint string `json:"containerRuntimeEndpoint"`
			HealthzBindAddress       string `json:"healthzBindAddress"`
			HealthzPort              int    `json:"healthzPort"`
			FailCgroupV1             *bool  `json:"failCgroupV1"`
		}
		if err := strictUnmarshal([]byte(p), &kc); err != nil {
			t.Errorf("kubeadm patch %q: %v", p, err)
			continue
		}
		if kc.Kind == "KubeletConfiguration" {
			found = true
			if kc.ContainerRuntimeEndpoint != install.KubeletDefaultEndpoint || kc.HealthzBindAddress != "127.0.0.1" || kc.HealthzPort != 10248 ||
				kc.FailCgroupV1 == nil || *kc.FailCgroupV1 {
				t.Errorf("KubeletConfiguration patch %+v", kc)
			}
		}
	}
	if !found {
		t.Error("no KubeletConfiguration patch")
	}
	// Pods, Services and make kind-e2e's docker network: inside 198.18.0.0/15, pairwise disjoint.
	checkDisjointInRange(t, "198.18.0.0/15", map[string]string{
		"podSubnet":      c.Networking.PodSubnet,
		"serviceSubnet":  c.Networking.ServiceSubnet,
		"docker network": KindE2ENetwork,
	})
}

// KindE2ENetwork is the docker network hack/kind-e2e.sh creates for the nodes.
const KindE2ENetwork = "198.18.192.0/24"

// TestKindE2ENetwork keeps hack/kind-e2e.sh on the network TestKindConfig checked.
func TestKindE2ENetwork(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repo, "hack/kind-e2e.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "\nKIND_NET_SUBNET="+KindE2ENetwork+" ") {
		t.Errorf("hack/kind-e2e.sh does not set KIND_NET_SUBNET=%s", KindE2ENetwork)
	}
}

func checkDisjointInRange(t *testing.T, outer string, nets map[string]string) {
	t.Helper()
	_, o, _ := net.ParseCIDR(outer)
	parsed := map[string]*net.IPNet{}
	for name, s := range nets {
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Errorf("%s %q: %v", name, s, err)
			continue
		}
		if ones, _ := n.Mask.Size(); !o.Contains(n.IP) || ones < 15 {
			t.Errorf("%s %s is not inside %s", name, s, outer)
		}
		for other, m := range parsed {
			if n.Contains(m.IP) || m.Contains(n.IP) {
				t.Errorf("%s %s overlaps %s %s", name, s, other, m)
			}
		}
		parsed[name] = n
	}
}

// TestKindConfigStrict proves unknown fields fail with kind's types.
func TestKindConfigStrict(t *testing.T) {
	var c v1alpha4.Cluster
	bad := "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: worker\n  extraMount: []\n"
	if err := strictUnmarshal([]byte(bad), &c); err == nil {
		t.Error("a misspelt field decoded without error")
	}
}
