package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/cluster"
)

// TestUpAfterCrash: every process of the cluster, containers included, dies with SIGKILL (a
// crash); a second Up must clean what they left and bring a working cluster back. The cluster
// stays up afterwards, so later tests do not depend on the order they run in.
func TestUpAfterCrash(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// A pod on every node, so that shims, containers, pod netns and CNI state exist at the crash.
	for _, n := range cl.Nodes {
		mustKubectl(ctx, t, podManifest("default", "crash-"+n.Name, n.Name, "exec sleep 100000", nil), "apply", "-f", "-")
	}
	for _, n := range cl.Nodes {
		mustKubectl(ctx, t, "", "wait", "--for=condition=Ready", "pod/crash-"+n.Name, "--timeout=180s")
	}
	killErr := cluster.Kill(cl.Config)
	survivors := cluster.MeasureRSS(cl.Config).Procs
	// Up again whatever happened, so that the tests after this one have a cluster.
	again, err := cluster.Up(ctx, cluster.Config{Nodes: len(cl.Nodes)}, os.Stderr)
	if err != nil {
		kube = nil
		t.Fatalf("cluster up after a crash: %v", err)
	}
	kube = again
	if killErr != nil {
		t.Errorf("kill the cluster: %v", killErr)
	}
	if survivors != 0 {
		t.Errorf("%d processes survived SIGKILL", survivors)
	}
	ready, err := again.ReadyNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ready) != len(again.Nodes) {
		t.Fatalf("Ready nodes after the crash: %v, want %d", ready, len(again.Nodes))
	}
	// A fresh cluster: nothing of the old one's API objects is left.
	out := mustKubectl(ctx, t, "", "get", "pods", "-o", "name")
	if strings.TrimSpace(out) != "" {
		t.Fatalf("pods of the crashed cluster are back: %q", out)
	}
}
