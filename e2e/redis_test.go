package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// scenario results, summed into the last line TestMain prints.
var (
	resultsMu sync.Mutex
	results   []verdict
)

func report(t *testing.T, name string, v verdict) {
	t.Helper()
	t.Logf("scenario %s: ops=%d unknown=%d linearizable=%v lost_writes=%d diverged=%d",
		name, v.Ops, v.Unknown, v.Linearizable, v.LostWrites, v.Diverged)
	resultsMu.Lock()
	defer resultsMu.Unlock()
	results = append(results, v)
}

// summary is the e2e's last line: `e2e: scenarios=N linearizable=N lost_writes=0 diverged=0`.
func summary() string {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	var lin, lost, div int
	for _, v := range results {
		if v.Linearizable {
			lin++
		}
		lost += v.LostWrites
		div += v.Diverged
	}
	return fmt.Sprintf("e2e: scenarios=%d linearizable=%d lost_writes=%d diverged=%d", len(results), lin, lost, div)
}

// TestRedisUnreplicated is the baseline scenario and the check of the workload itself: one
// ordinary (unlabelled) Redis pod on node2 behind a ClusterIP Service, concurrent clients on
// node1. A single Redis is linearizable, so any failure here is the harness's or the network's.
func TestRedisUnreplicated(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const ns = "e2e-redis-plain"
	server, client := cl.Nodes[len(cl.Nodes)-1].Name, cl.Nodes[0].Name
	createNamespace(ctx, t, ns)
	pod := podManifestImage(ns, "redis", server, nodelab.RedisImage,
		"exec redis-server --save '' --appendonly no --protected-mode no", nil)
	service := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: redis, namespace: %s}
spec:
  selector: {app: redis}
  ports: [{port: 6379}]
`, ns)
	mustKubectl(ctx, t, pod+"---\n"+service, "apply", "-f", "-")
	mustKubectl(ctx, t, "", "wait", "-n", ns, "--for=condition=Ready", "pod/redis", "--timeout=180s")
	ip := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "service", "-n", ns, "redis", "-o", "jsonpath={.spec.clusterIP}"))
	dial, err := cl.NodeDialer(client)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(ip, "6379")
	eventually(ctx, t, time.Minute, "redis reachable through the service", func() error {
		_, err := appState(ctx, addr, dial)
		return err
	})

	run, stop := context.WithTimeout(ctx, 8*time.Second)
	h := runWorkload(run, workload{Addr: addr, Dial: dial, Clients: 4, Keys: 3, Seed: 1})
	stop()
	v := h.check(t)
	if h.ok < 100 {
		t.Errorf("only %d operations succeeded in 8s; the workload did not run", h.ok)
	}

	// The app itself, read at 127.0.0.1 inside its pod, must hold what the final reads saw.
	netns, err := cl.PodNetNS(ctx, server, ns, "redis")
	if err != nil {
		t.Fatal(err)
	}
	state, err := appState(ctx, "127.0.0.1:6379", func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netintercept.DialInNetns(ctx, netns, network, addr)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range h.ops {
		in, out := op.Input.(redisOp), op.Output.(redisOut)
		if op.ClientId == finalReader && state[in.Key] != out.Value {
			t.Errorf("app holds %s=%q, the final read through the service saw %q", in.Key, state[in.Key], out.Value)
			v.Diverged = 1
		}
	}
	report(t, "unreplicated-redis", v)
}
