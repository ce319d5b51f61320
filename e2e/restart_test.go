package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/cluster"
)

// TestStopStart: the whole cluster stops (every process, the network, the mounts) and starts
// again on its state: API objects are still there, the nodes come back Ready, and a pod from
// before runs again with the files it wrote to its emptyDir volume.
func TestStopStart(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const ns = "e2e-restart"
	mustKubectl(ctx, t, "", "create", "namespace", ns)
	mustKubectl(ctx, t, "", "create", "configmap", "-n", ns, "marker", "--from-literal=value=before-stop")
	pod := strings.Replace(podManifest(ns, "keeper", cl.Nodes[0].Name,
		"[ -f /data/first ] || date > /data/first; echo started; exec sleep 100000", nil),
		"    command:", "    volumeMounts: [{name: data, mountPath: /data}]\n    command:", 1) +
		"  volumes: [{name: data, emptyDir: {}}]\n"
	mustKubectl(ctx, t, pod, "apply", "-f", "-")
	mustKubectl(ctx, t, "", "wait", "-n", ns, "--for=condition=Ready", "pod/keeper", "--timeout=180s")
	first := mustKubectl(ctx, t, "", "exec", "-n", ns, "keeper", "--", "cat", "/data/first")

	if err := cluster.Stop(ctx, cl.Config, os.Stderr); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if left := cluster.NetworkLeftovers(ctx); len(left) > 0 {
		t.Errorf("stop left the network behind: %v", left)
	}
	again, err := cluster.Start(ctx, cluster.Config{Nodes: len(cl.Nodes)}, os.Stderr)
	if err != nil {
		kube = nil
		t.Fatalf("start: %v", err)
	}
	kube = again

	if v := mustKubectl(ctx, t, "", "get", "configmap", "-n", ns, "marker", "-o", "jsonpath={.data.value}"); v != "before-stop" {
		t.Fatalf("configmap after restart = %q, want before-stop", v)
	}
	// The pod's old sandbox is gone; kubelet starts a new one. Wait for a running container
	// of the new sandbox, then check the volume kept the file of the first run.
	eventually(ctx, t, 3*time.Minute, "keeper running again", func() error {
		_, err := kubectl(ctx, t, "", "wait", "-n", ns, "--for=condition=Ready", "pod/keeper", "--timeout=5s")
		if err != nil {
			return err
		}
		got, err := kubectl(ctx, t, "", "exec", "-n", ns, "keeper", "--", "cat", "/data/first")
		if err != nil {
			return err
		}
		if got != first {
			t.Fatalf("emptyDir file after restart = %q, want %q", got, first)
		}
		return nil
	})
}
