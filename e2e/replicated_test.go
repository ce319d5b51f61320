package e2e

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/test/lab/cluster"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// The replicated Redis of the fault scenarios: a StatefulSet of 3 replicas labelled
// smr.io/replicate=true (one per node, members found through the API server), a ClusterIP
// Service in front, and an unlabelled Redis beside it that must keep working throughout.
const smrNS = "e2e-smr"

var redisSetYAML = `apiVersion: apps/v1
kind: StatefulSet
metadata: {name: redis, namespace: ` + smrNS + `}
spec:
  serviceName: redis
  replicas: 3
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: redis}}
  template:
    metadata:
      labels: {app: redis, smr.io/replicate: "true"}
      annotations:
        smr.io/ports: "6379/resp"
        smr.io/membership: "kubernetes"
        smr.io/raft-port: "7480"
    spec:
      terminationGracePeriodSeconds: 2
      readinessGates: [{conditionType: smr.io/replica-serving}]
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: redis}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: redis
        image: ` + nodelab.RedisImage + `
        imagePullPolicy: Never
        command: ["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
        ports: [{containerPort: 6379}, {containerPort: 7480}]
---
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: ` + smrNS + `}
spec:
  selector: {app: redis}
  ports: [{port: 6379}]
`

var (
	redisSetOnce sync.Mutex
	redisSetUp   *cluster.Cluster // the cluster the set was deployed on
	redisSetFail *cluster.Cluster // the cluster where deploying it failed (later tests fail fast)
)

// deployRedisSet deploys the replicated set (once per cluster) and waits until a write through
// the Service succeeds.
func deployRedisSet(ctx context.Context, t *testing.T, cl *cluster.Cluster) {
	t.Helper()
	redisSetOnce.Lock()
	defer redisSetOnce.Unlock()
	if redisSetUp == cl {
		return
	}
	if redisSetFail == cl {
		t.Fatal("the replicated Redis did not come up on this cluster (see the first replicated test)")
	}
	redisSetFail = cl // until it succeeds
	root := cl.RepoRoot + "/manifests/"
	mustKubectl(ctx, t, "", "apply", "-f", root+"namespace.yaml", "-f", root+"rbac.yaml", "-f", root+"readiness-rbac.yaml")
	mustKubectl(ctx, t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+smrNS+"}\n", "apply", "-f", "-")
	plain := podManifestImage(smrNS, "plain", cl.Nodes[0].Name, nodelab.RedisImage,
		"exec redis-server --save '' --appendonly no --protected-mode no", nil)
	mustKubectl(ctx, t, redisSetYAML+"---\n"+plain, "apply", "-f", "-")
	waitRedisSet(ctx, t)
	mustKubectl(ctx, t, "", "wait", "-n", smrNS, "--for=condition=Ready", "pod/plain", "--timeout=180s")
	dial, addr := serviceClient(ctx, t, cl, cl.Nodes[0].Name)
	eventually(ctx, t, 2*time.Minute, "a write through the replicated service", func() error {
		rdb := workload{Addr: addr, Dial: dial}.client()
		defer rdb.Close()
		return rdb.Set(ctx, "e2e:ready", "1", 0).Err()
	})
	redisSetUp, redisSetFail = cl, nil
}

// waitRedisSet waits until the 3 replicas are Ready.
func waitRedisSet(ctx context.Context, t *testing.T) {
	t.Helper()
	eventually(ctx, t, 3*time.Minute, "3 Ready replicas", func() error {
		_, err := kubectl(ctx, t, "", "wait", "-n", smrNS, "--for=condition=Ready", "pod/redis-0", "pod/redis-1", "pod/redis-2", "--timeout=10s")
		return err
	})
}

// serviceClient returns a dialer from node's namespace and the Service address.
func serviceClient(ctx context.Context, t *testing.T, cl *cluster.Cluster, node string) (func(context.Context, string, string) (net.Conn, error), string) {
	t.Helper()
	dial, err := cl.NodeDialer(node)
	if err != nil {
		t.Fatal(err)
	}
	ip := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "service", "-n", smrNS, "redis", "-o", "jsonpath={.spec.clusterIP}"))
	return dial, net.JoinHostPort(ip, "6379")
}

// replicaNodes maps each replica pod to its node.
func replicaNodes(ctx context.Context, t *testing.T) map[string]string {
	t.Helper()
	out := mustKubectl(ctx, t, "", "get", "pods", "-n", smrNS, "-l", "app=redis", "-o",
		`jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName} {end}`)
	m := map[string]string{}
	for _, f := range strings.Fields(out) {
		if pod, node, ok := strings.Cut(f, "="); ok && node != "" {
			m[pod] = node
		}
	}
	return m
}

// replicaStates reads every replica's own Redis directly (127.0.0.1 inside its pod).
func replicaStates(ctx context.Context, t *testing.T, cl *cluster.Cluster) (map[string]map[string]string, error) {
	t.Helper()
	return appStates(ctx, cl, smrNS, replicaNodes(ctx, t))
}

// appStates reads the own Redis of each pod of namespace ns (pod name -> node) directly.
func appStates(ctx context.Context, cl *cluster.Cluster, ns string, pods map[string]string) (map[string]map[string]string, error) {
	states := map[string]map[string]string{}
	for pod, node := range pods {
		netns, err := cl.PodNetNS(ctx, node, ns, pod)
		if err != nil {
			return nil, err
		}
		st, err := appState(ctx, "127.0.0.1:6379", inNetns(netns))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", pod, err)
		}
		states[pod] = st
	}
	return states, nil
}

// inNetns dials inside a pod's network namespace (its own 127.0.0.1 is the pod's).
func inNetns(netns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netintercept.DialInNetns(ctx, netns, network, addr)
	}
}

// podRedis is a client of pod's own Redis (127.0.0.1:6379 inside the pod, around smr-cri).
func podRedis(ctx context.Context, t *testing.T, cl *cluster.Cluster, pod string) *redis.Client {
	t.Helper()
	netns, err := cl.PodNetNS(ctx, replicaNodes(ctx, t)[pod], smrNS, pod)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", PoolSize: 1, MaxRetries: -1, Dialer: inNetns(netns)})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// diverged waits (followers apply a little behind) until every replica's app holds the same
// state, and returns how many replicas still differ from redis-0 when the wait ends.
func diverged(ctx context.Context, t *testing.T, cl *cluster.Cluster) int {
	t.Helper()
	var last map[string]map[string]string
	deadline := time.Now().Add(time.Minute)
	for {
		states, err := replicaStates(ctx, t, cl)
		if err == nil && len(states) == 3 {
			last = states
			n := 0
			for _, st := range states {
				if !maps.Equal(st, states["redis-0"]) {
					n++
				}
			}
			if n == 0 {
				return 0
			}
		}
		if time.Now().After(deadline) {
			if last == nil {
				t.Errorf("could not read the replicas' states: %v", err)
				return 3
			}
			n := 0
			for pod, st := range last {
				if !maps.Equal(st, last["redis-0"]) {
					n++
					t.Errorf("replica %s differs from redis-0: %s", pod, stateDiff(last["redis-0"], st))
				}
			}
			return n
		}
		time.Sleep(time.Second)
	}
}

// stateDiff describes up to 10 keys where two replicas' states differ.
func stateDiff(a, b map[string]string) string {
	keys := slices.Sorted(maps.Keys(a))
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	var diffs []string
	for _, k := range keys {
		va, oka := a[k]
		vb, okb := b[k]
		if va != vb || oka != okb {
			diffs = append(diffs, fmt.Sprintf("%s: %q vs %q", k, va, vb))
		}
	}
	if len(diffs) > 10 {
		diffs = append(diffs[:10], fmt.Sprintf("... %d more", len(diffs)-10))
	}
	return strings.Join(diffs, "; ")
}

// leaderNode is the node of the current leader of the replicated set (member N is pod
// redis-(N-1)), from the ordering nodes' logs.
func leaderNode(ctx context.Context, t *testing.T, cl *cluster.Cluster) (string, cluster.LeaderChange) {
	t.Helper()
	changes, err := cl.LeaderChanges(smrNS + ".redis")
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) == 0 {
		t.Fatal("no leader election in the smr-cri logs")
	}
	last := changes[len(changes)-1]
	node := replicaNodes(ctx, t)[fmt.Sprintf("redis-%d", last.Member-1)]
	if node == "" {
		t.Fatalf("leader member %d has no pod", last.Member)
	}
	return node, last
}

// otherNode returns a node that is not node.
func otherNode(cl *cluster.Cluster, node string) string {
	for _, n := range cl.Nodes {
		if n.Name != node {
			return n.Name
		}
	}
	return node
}

// scenario runs the workload against the replicated set from clientNode while fault runs
// (started after two seconds), keeps the workload going a few seconds after the fault returns,
// then checks the history (porcupine), lost increments, replica states, and that the unlabelled
// Redis kept answering. Keys are prefixed with the scenario's name, so scenarios do not mix.
func scenario(t *testing.T, name, clientNode string, fault func(ctx context.Context, t *testing.T)) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	deployRedisSet(ctx, t, cl)
	dial, addr := serviceClient(ctx, t, cl, clientNode)
	plainIP := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "pod", "-n", smrNS, "plain", "-o", "jsonpath={.status.podIP}"))

	run, stop := context.WithCancel(ctx)
	var h *history
	done := make(chan struct{})
	go func() {
		defer close(done)
		h = runWorkload(run, workload{Addr: addr, Dial: dial, Clients: 4, Keys: 3, Seed: uint64(len(name)), Prefix: name + ":"})
	}()
	time.Sleep(2 * time.Second)
	fault(ctx, t)
	time.Sleep(4 * time.Second) // the service must work again after the fault
	stop()
	<-done
	waitRedisSet(ctx, t)

	v := h.check(t)
	if h.ok == 0 {
		t.Errorf("no operation succeeded")
	}
	v.Diverged = diverged(ctx, t, cl)
	if _, err := appState(ctx, net.JoinHostPort(plainIP, "6379"), dial); err != nil {
		t.Errorf("the unlabelled Redis stopped answering: %v", err)
	}
	report(t, name, v)
}

// TestReplicatedSteady: no fault; the baseline of the replicated scenarios.
func TestReplicatedSteady(t *testing.T) {
	cl := requireCluster(t)
	scenario(t, "replicated-steady", cl.Nodes[0].Name, func(ctx context.Context, t *testing.T) {
		time.Sleep(3 * time.Second)
	})
}

// TestReplicatedDeletePod: a replica pod is deleted; the StatefulSet recreates it and it rebuilds
// its state from the log before serving.
func TestReplicatedDeletePod(t *testing.T) {
	cl := requireCluster(t)
	scenario(t, "delete-replica-pod", cl.Nodes[0].Name, func(ctx context.Context, t *testing.T) {
		mustKubectl(ctx, t, "", "delete", "pod", "-n", smrNS, "redis-1", "--wait=true")
		waitRedisSet(ctx, t)
	})
}

// TestReplicatedKillSmrCRI: smr-cri on the leader's node dies with SIGKILL and restarts; the pods
// keep running and replication re-attaches.
func TestReplicatedKillSmrCRI(t *testing.T) {
	cl := requireCluster(t)
	ctx := context.Background()
	deployRedisSet(ctx, t, cl)
	victim, _ := leaderNode(ctx, t, cl)
	scenario(t, "kill-smr-cri", otherNode(cl, victim), func(ctx context.Context, t *testing.T) {
		if err := cl.KillSmrCRI(victim); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		if err := cl.RestartSmrCRI(ctx, victim); err != nil {
			t.Fatal(err)
		}
	})
}

// TestReplicatedPartitionLeader: the leader's node is cut off from the others (iptables DROP in
// its namespace), then healed; the traces must show a new leader elected meanwhile.
func TestReplicatedPartitionLeader(t *testing.T) {
	cl := requireCluster(t)
	ctx := context.Background()
	deployRedisSet(ctx, t, cl)
	victim, before := leaderNode(ctx, t, cl)
	scenario(t, "partition-leader", otherNode(cl, victim), func(ctx context.Context, t *testing.T) {
		if err := cl.Partition(ctx, victim); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := cl.Heal(ctx, victim); err != nil {
				t.Error(err)
			}
		}()
		eventually(ctx, t, time.Minute, "a new leader elected", func() error {
			if _, now := leaderNode(ctx, t, cl); now.Term > before.Term && now.Member != before.Member {
				return nil
			}
			return fmt.Errorf("leader still member %d (term %d)", before.Member, before.Term)
		})
		time.Sleep(2 * time.Second)
	})
	if _, after := leaderNode(ctx, t, cl); after.Term <= before.Term {
		t.Errorf("ordering traces show no leader change: term %d before, %d after", before.Term, after.Term)
	}
}
