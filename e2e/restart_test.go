package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/cluster"
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
	// With the replicated Redis deployed (the replicated scenarios ran), a write acknowledged
	// before the stop must be read after the start: the apps come back empty and rebuild their
	// state from smr-cri's log, kept in the state directory.
	var h *history
	var withRedis bool
	redisSetOnce.Lock()
	withRedis = redisSetUp == cl
	redisSetOnce.Unlock()
	if withRedis {
		h = &history{base: time.Now()}
		dial, addr := serviceClient(ctx, t, cl, cl.Nodes[0].Name)
		rdb := workload{Addr: addr, Dial: dial}.client()
		do(ctx, rdb, h, 0, redisOp{Kind: "set", Key: "stop-start:marker", Value: "before-stop"})
		do(ctx, rdb, h, 0, redisOp{Kind: "incr", Key: "stop-start:n"})
		rdb.Close()
		if h.ok != 2 {
			t.Fatalf("writes before the stop failed (%d ok)", h.ok)
		}
	}

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
	if withRedis {
		redisSetOnce.Lock()
		redisSetUp = again
		redisSetOnce.Unlock()
	}

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
	if withRedis {
		waitRedisSet(ctx, t)
		dial, addr := serviceClient(ctx, t, again, again.Nodes[0].Name)
		eventually(ctx, t, 2*time.Minute, "replicated redis answers after the restart", func() error {
			_, err := appState(ctx, addr, dial)
			return err
		})
		rdb := workload{Addr: addr, Dial: dial}.client()
		defer rdb.Close()
		final, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		finalRead(final, rdb, h, "stop-start:marker", "stop-start:n")
		v := h.check(t)
		v.Diverged = diverged(ctx, t, again)
		report(t, "stop-start-cluster", v)
	}
}
