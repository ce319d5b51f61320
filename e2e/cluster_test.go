// Package e2e holds the end-to-end tests that run on the local multi-node cluster
// (test/lab/cluster). They need root and run with SMR_INTEGRATION=1:
//
//	SMR_INTEGRATION=1 go test -count=1 -v ./e2e/
package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/cluster"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

func TestNodesReady(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ready, err := cl.ReadyNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, n := range cl.Nodes {
		want = append(want, n.Name)
	}
	slices.Sort(ready)
	if !slices.Equal(ready, want) {
		t.Fatalf("Ready nodes %v, want %v", ready, want)
	}
	// Each node reports the address it was given (kubectl logs/exec depend on it).
	out := mustKubectl(ctx, t, "", "get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name}={.status.addresses[?(@.type=="InternalIP")].address} {end}`)
	for _, n := range cl.Nodes {
		if !strings.Contains(out, n.Name+"="+n.IP+" ") {
			t.Errorf("node addresses %q lack %s=%s", out, n.Name, n.IP)
		}
	}
}

// podManifest is a busybox pod pinned to a node by the scheduler (nodeSelector), so scheduling,
// the service account token volume and the CNI of that node are all exercised.
func podManifest(ns, name, node, script string, labels map[string]string) string {
	return podManifestImage(ns, name, node, nodelab.BusyboxImage, script, labels)
}

// podManifestImage is podManifest with another image (one that has sh).
func podManifestImage(ns, name, node, image, script string, labels map[string]string) string {
	var lb strings.Builder
	for k, v := range labels {
		fmt.Fprintf(&lb, "\n    %s: %q", k, v)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels:
    app: %s%s
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: %s
    imagePullPolicy: Never
    command: ["sh", "-c", %q]
`, name, ns, name, lb.String(), node, image, script)
}

// TestPodNetworkServiceLogsExec: a client pod on node1 reaches a web server pod on node2 by pod
// IP and through a ClusterIP Service (kube-proxy), and kubectl logs/exec work through the
// API server -> kubelet -> smr-cri -> containerd streaming path.
func TestPodNetworkServiceLogsExec(t *testing.T) {
	cl := requireCluster(t)
	if len(cl.Nodes) < 2 {
		t.Fatalf("need 2 nodes, have %d", len(cl.Nodes))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const ns = "e2e-net"
	createNamespace(ctx, t, ns)
	server := podManifest(ns, "web", cl.Nodes[1].Name,
		"mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && echo server-ready && exec httpd -f -v -p 8080 -h /www", nil)
	client := podManifest(ns, "client", cl.Nodes[0].Name, "echo client-ready; exec sleep 100000", nil)
	service := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: web, namespace: %s}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`, ns)
	mustKubectl(ctx, t, server+"---\n"+client+"---\n"+service, "apply", "-f", "-")
	mustKubectl(ctx, t, "", "wait", "-n", ns, "--for=condition=Ready", "pod/web", "pod/client", "--timeout=180s")

	podIP := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "pod", "-n", ns, "web", "-o", "jsonpath={.status.podIP}"))
	if !strings.HasPrefix(podIP, "198.19.2.") {
		t.Fatalf("web pod IP %q is not in node2's pod subnet %s", podIP, cl.Nodes[1].PodSubnet)
	}
	hostOf := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "pod", "-n", ns, "client", "-o", "jsonpath={.spec.nodeName}"))
	if hostOf != cl.Nodes[0].Name {
		t.Fatalf("client scheduled on %q, want %s", hostOf, cl.Nodes[0].Name)
	}
	fetch := func(target string) func() error {
		return func() error {
			out, err := fetchFrom(ctx, t, ns, "http://"+target+"/")
			if err != nil {
				return err
			}
			if !strings.Contains(out, "hello-from-web") {
				return fmt.Errorf("GET http://%s/ = %q, want hello-from-web", target, out)
			}
			return nil
		}
	}
	t.Run("pod IP across nodes", func(t *testing.T) {
		eventually(ctx, t, 30*time.Second, "wget pod IP", fetch(podIP+":8080"))
	})
	t.Run("ClusterIP service", func(t *testing.T) {
		clusterIP := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "service", "-n", ns, "web", "-o", "jsonpath={.spec.clusterIP}"))
		if !strings.HasPrefix(clusterIP, "198.18.1") {
			t.Fatalf("cluster IP %q outside the service range", clusterIP)
		}
		eventually(ctx, t, 60*time.Second, "wget service", fetch(clusterIP))
	})
	t.Run("ClusterIP service back to the same pod (hairpin, bridge netfilter)", func(t *testing.T) {
		clusterIP := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "service", "-n", ns, "web", "-o", "jsonpath={.spec.clusterIP}"))
		eventually(ctx, t, 60*time.Second, "wget service from its own backend", func() error {
			out, err := kubectl(ctx, t, "", "exec", "-n", ns, "web", "--", "timeout", "5", "wget", "-q", "-O", "-", "http://"+clusterIP+"/")
			if err == nil && !strings.Contains(out, "hello-from-web") {
				return fmt.Errorf("got %q", out)
			}
			return err
		})
	})
	t.Run("logs", func(t *testing.T) {
		out := mustKubectl(ctx, t, "", "logs", "-n", ns, "web")
		if !strings.Contains(out, "server-ready") {
			t.Fatalf("kubectl logs web = %q, want server-ready", out)
		}
	})
	t.Run("exec", func(t *testing.T) {
		out := mustKubectl(ctx, t, "", "exec", "-n", ns, "web", "--", "cat", "/www/index.html")
		if strings.TrimSpace(out) != "hello-from-web" {
			t.Fatalf("kubectl exec cat = %q", out)
		}
	})
}

// TestSmrCRIIdentity: with the project's RBAC manifest applied, smr-cri's kubeconfig on the nodes
// may read pods (discovery) and nothing more.
func TestSmrCRIIdentity(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := cl.RepoRoot + "/manifests/"
	mustKubectl(ctx, t, "", "apply", "-f", root+"namespace.yaml", "-f", root+"rbac.yaml")
	asSmrCRI := func(args ...string) (string, error) {
		return kubectl(ctx, t, "", append([]string{"--kubeconfig", cl.SmrCRIKubeconfig()}, args...)...)
	}
	if who, err := asSmrCRI("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"); err != nil || who != cluster.SmrCRIUser {
		t.Fatalf("smr-cri's kubeconfig authenticates as %q (%v), want %s", who, err, cluster.SmrCRIUser)
	}
	for _, tc := range []struct {
		verb, resource string
		want           string
	}{
		{"list", "pods", "yes"}, {"watch", "pods", "yes"}, {"create", "events", "yes"},
		{"delete", "pods", "no"}, {"get", "secrets", "no"}, {"create", "pods", "no"},
	} {
		got, _ := asSmrCRI("auth", "can-i", tc.verb, tc.resource, "--all-namespaces") // exit 1 on "no"
		if strings.TrimSpace(got) != tc.want {
			t.Errorf("smr-cri can-i %s %s = %q, want %s", tc.verb, tc.resource, strings.TrimSpace(got), tc.want)
		}
	}
}
