package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// webAndClient starts an httpd pod on serverNode and a client pod on clientNode in namespace ns
// and returns the server's pod IP.
func webAndClient(ctx context.Context, t *testing.T, ns, serverNode, clientNode string) string {
	t.Helper()
	createNamespace(ctx, t, ns)
	server := podManifest(ns, "web", serverNode,
		"mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www", nil)
	client := podManifest(ns, "client", clientNode, "exec sleep 100000", nil)
	mustKubectl(ctx, t, server+"---\n"+client, "apply", "-f", "-")
	mustKubectl(ctx, t, "", "wait", "-n", ns, "--for=condition=Ready", "pod/web", "pod/client", "--timeout=180s")
	return strings.TrimSpace(mustKubectl(ctx, t, "", "get", "pod", "-n", ns, "web", "-o", "jsonpath={.status.podIP}"))
}

// fetchFrom GETs url from inside the client pod of ns.
func fetchFrom(ctx context.Context, t *testing.T, ns, url string) (string, error) {
	t.Helper()
	// Debian's busybox-static wget crashes with -T; busybox timeout bounds it instead.
	return kubectl(ctx, t, "", "exec", "-n", ns, "client", "--", "timeout", "5", "wget", "-q", "-O", "-", url)
}

// TestPartitionHeal: a partitioned node cannot reach, and cannot be reached by, the other
// nodes' pods, while it stays Ready (the control plane is reachable); healing restores traffic.
func TestPartitionHeal(t *testing.T) {
	cl := requireCluster(t)
	if len(cl.Nodes) < 2 {
		t.Fatalf("need 2 nodes, have %d", len(cl.Nodes))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const ns = "e2e-partition"
	victim := cl.Nodes[1].Name
	ip := webAndClient(ctx, t, ns, victim, cl.Nodes[0].Name)
	url := fmt.Sprintf("http://%s:8080/", ip)
	eventually(ctx, t, 30*time.Second, "reach web before the partition", func() error {
		_, err := fetchFrom(ctx, t, ns, url)
		return err
	})
	if err := cl.Partition(ctx, victim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Heal(context.Background(), victim) })
	if err := cl.Partition(ctx, victim); err == nil {
		t.Error("partitioning a partitioned node succeeded; want an error")
	}
	if out, err := fetchFrom(ctx, t, ns, url); err == nil {
		t.Fatalf("reached %s across the partition: %q", url, out)
	}
	// kubelet of the partitioned node still reports: kubectl exec into its pod works.
	if out := mustKubectl(ctx, t, "", "exec", "-n", ns, "web", "--", "cat", "/www/index.html"); !strings.Contains(out, "hello-from-web") {
		t.Fatalf("exec into the partitioned node's pod: %q", out)
	}
	if err := cl.Heal(ctx, victim); err != nil {
		t.Fatal(err)
	}
	if err := cl.Heal(ctx, victim); err != nil {
		t.Fatalf("healing twice: %v", err)
	}
	eventually(ctx, t, 30*time.Second, "reach web after healing", func() error {
		_, err := fetchFrom(ctx, t, ns, url)
		return err
	})
}

// TestSmrCRIKillRestart: smr-cri dies with SIGKILL on a node; the pods there keep running (they
// belong to containerd), and after a restart kubelet works through smr-cri again (exec, new pods).
func TestSmrCRIKillRestart(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const ns = "e2e-smrcri"
	node := cl.Nodes[0].Name
	ip := webAndClient(ctx, t, ns, node, cl.Nodes[len(cl.Nodes)-1].Name)
	url := fmt.Sprintf("http://%s:8080/", ip)
	if err := cl.KillSmrCRI(node); err != nil {
		t.Fatal(err)
	}
	// The pod still serves while its node's CRI proxy is gone.
	eventually(ctx, t, 30*time.Second, "web serves without smr-cri", func() error {
		_, err := fetchFrom(ctx, t, ns, url)
		return err
	})
	if err := cl.RestartSmrCRI(ctx, node); err != nil {
		t.Fatal(err)
	}
	if err := cl.RestartSmrCRI(ctx, node); err == nil {
		t.Error("restarting a running smr-cri succeeded; want an error")
	}
	eventually(ctx, t, time.Minute, "exec through the restarted smr-cri", func() error {
		out, err := kubectl(ctx, t, "", "exec", "-n", ns, "web", "--", "cat", "/www/index.html")
		if err == nil && !strings.Contains(out, "hello-from-web") {
			return fmt.Errorf("exec output %q", out)
		}
		return err
	})
	mustKubectl(ctx, t, podManifest(ns, "after", node, "exec sleep 100000", nil), "apply", "-f", "-")
	mustKubectl(ctx, t, "", "wait", "-n", ns, "--for=condition=Ready", "pod/after", "--timeout=180s")
	restarts := mustKubectl(ctx, t, "", "get", "pod", "-n", ns, "web", "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
	if restarts != "0" {
		t.Errorf("web restarted %s times across the smr-cri restart; want 0", restarts)
	}
}
