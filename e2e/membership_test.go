package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smr-io/smr-cri/internal/nodestatus"
	"github.com/smr-io/smr-cri/test/lab/cluster"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// Membership from Kubernetes: a replicated Redis StatefulSet with the default
// podManagementPolicy (OrderedReady: pod-0 runs alone first) and preferred
// anti-affinity (so 5 replicas fit on the 3 nodes), in a namespace of its own.
const (
	membersNS    = "e2e-members"
	membersSet   = "mredis"
	membersGroup = membersNS + "." + membersSet
)

var membersSetYAML = `apiVersion: apps/v1
kind: StatefulSet
metadata: {name: ` + membersSet + `, namespace: ` + membersNS + `}
spec:
  serviceName: ` + membersSet + `
  replicas: 3
  selector: {matchLabels: {app: ` + membersSet + `}}
  template:
    metadata:
      labels: {app: ` + membersSet + `, smr.io/replicate: "true"}
      annotations:
        smr.io/ports: "6379/resp"
        smr.io/membership: "kubernetes"
        smr.io/raft-port: "7480"
    spec:
      terminationGracePeriodSeconds: 2
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector: {matchLabels: {app: ` + membersSet + `}}
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
metadata: {name: ` + membersSet + `, namespace: ` + membersNS + `}
spec:
  selector: {app: ` + membersSet + `}
  ports: [{port: 6379}]
`

// TestMembershipFromKubernetes: an OrderedReady set of 3 forms its group (pod-0 alone
// bootstraps members 1..3), then under load it scales to 5 (two members added as learners,
// given the state, promoted), back to 3 (members 5 and 4 removed), and one replica moves to
// another node without its data directory (it rejoins, catching up before it votes). Each
// phase is porcupine-checked, lost increments counted, and every replica's own Redis compared.
func TestMembershipFromKubernetes(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	createNamespace(ctx, t, membersNS)
	// Its group would stay on the nodes and in their status (TestOperatorView expects its own
	// group alone there).
	t.Cleanup(func() {
		mustKubectl(context.Background(), t, "", "delete", "namespace", membersNS, "--wait=true", "--timeout=3m")
	})
	mustKubectl(ctx, t, membersSetYAML, "apply", "-f", "-")
	waitMembers(ctx, t, cl, 3)
	client := cl.Nodes[0].Name
	dial, err := cl.NodeDialer(client)
	if err != nil {
		t.Fatal(err)
	}
	ip := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "service", "-n", membersNS, membersSet, "-o", "jsonpath={.spec.clusterIP}"))
	addr := net.JoinHostPort(ip, "6379")
	eventually(ctx, t, 2*time.Minute, "a write through the replicated service", func() error {
		rdb := workload{Addr: addr, Dial: dial}.client()
		defer rdb.Close()
		return rdb.Set(ctx, "e2e:ready", "1", 0).Err()
	})

	phase := func(name string, replicas int, change func()) {
		t.Helper()
		run, stop := context.WithCancel(ctx)
		var h *history
		done := make(chan struct{})
		go func() {
			defer close(done)
			h = runWorkload(run, workload{Addr: addr, Dial: dial, Clients: 4, Keys: 3, Seed: uint64(len(name)), Prefix: name + ":"})
		}()
		time.Sleep(2 * time.Second)
		change()
		time.Sleep(4 * time.Second) // the service must work on the new membership
		stop()
		<-done
		v := h.check(t)
		if h.ok == 0 {
			t.Errorf("%s: no operation succeeded", name)
		}
		v.Diverged = membersDiverged(ctx, t, cl, replicas)
		report(t, name, v)
	}

	phase("ordered-ready", 3, func() {
		waitGroupMembers(ctx, t, cl, 3)
		time.Sleep(2 * time.Second)
	})
	mark := changes(t, cl)
	phase("scale-3-to-5", 5, func() {
		mustKubectl(ctx, t, "", "scale", "statefulset", "-n", membersNS, membersSet, "--replicas=5")
		waitMembers(ctx, t, cl, 5)
		waitGroupMembers(ctx, t, cl, 5)
	})
	// Each new member was added as a learner and promoted, once each (one log line per change).
	expectChanges(t, cl, mark, "add-learner", 4, 5)
	expectChanges(t, cl, mark, "promote", 4, 5)
	mark = changes(t, cl)
	phase("scale-5-to-3", 3, func() {
		mustKubectl(ctx, t, "", "scale", "statefulset", "-n", membersNS, membersSet, "--replicas=3")
		eventually(ctx, t, 3*time.Minute, "pods 3 and 4 gone", func() error {
			if n := len(memberPods(ctx, t)); n != 3 {
				return fmt.Errorf("%d pods", n)
			}
			return nil
		})
		waitGroupMembers(ctx, t, cl, 3)
	})
	expectChanges(t, cl, mark, "remove", 5, 4)
	mark = changes(t, cl)
	phase("move-replica-without-data", 3, func() {
		// redis-1's node is cordoned and the pod deleted: the StatefulSet re-creates it on
		// another node, where its data directory does not exist.
		from := memberPods(ctx, t)[membersSet+"-1"]
		mustKubectl(ctx, t, "", "cordon", from)
		defer mustKubectl(ctx, t, "", "uncordon", from)
		mustKubectl(ctx, t, "", "delete", "pod", "-n", membersNS, membersSet+"-1", "--wait=true")
		waitMembers(ctx, t, cl, 3)
		if to := memberPods(ctx, t)[membersSet+"-1"]; to == from {
			t.Fatalf("%s-1 came back on %s, its old node", membersSet, to)
		}
		waitGroupMembers(ctx, t, cl, 3)
	})

	// Scale to 0 and back: the leader removes members down to member 1 while the pods stop
	// (OrderedReady stops them highest first); member 1's data directory keeps the state on its
	// node. pod-0 is brought back on that node (the others cordoned), and the group resumes with
	// its state.
	// The moved member came back without its log: if the leader still knew what it had
	// acknowledged, it replaced it (removed, added as a learner, promoted); after a leader change
	// (the moved pod led) it simply catches up. Either way it catches up before it votes.
	if moved, _ := cl.MembershipChanges(membersGroup); len(moved) > mark {
		t.Logf("after the move: %+v", moved[mark:])
		expectChanges(t, cl, mark, "remove", 2)
		expectChanges(t, cl, mark, "add-learner", 2)
		expectChanges(t, cl, mark, "promote", 2)
	} else {
		t.Logf("after the move: no membership change (a new leader caught member 2 up)")
	}
	node0 := memberPods(ctx, t)[membersSet+"-0"]
	mark = changes(t, cl)
	mustKubectl(ctx, t, "", "scale", "statefulset", "-n", membersNS, membersSet, "--replicas=0")
	eventually(ctx, t, 3*time.Minute, "every pod gone", func() error {
		if n := len(memberPods(ctx, t)); n != 0 {
			return fmt.Errorf("%d pods", n)
		}
		return nil
	})
	for _, n := range cl.Nodes {
		if n.Name != node0 {
			mustKubectl(ctx, t, "", "cordon", n.Name)
		}
	}
	mustKubectl(ctx, t, "", "scale", "statefulset", "-n", membersNS, membersSet, "--replicas=3")
	waitMembers(ctx, t, cl, 3)
	for _, n := range cl.Nodes {
		mustKubectl(ctx, t, "", "uncordon", n.Name)
	}
	waitGroupMembers(ctx, t, cl, 3)
	// Down to member 1 while the pods stopped (3, then 2), then 2 and 3 added again.
	expectChanges(t, cl, mark, "remove", 3, 2)
	expectChanges(t, cl, mark, "add-learner", 2, 3)
	if got := serviceGet(ctx, t, dial, addr, "e2e:ready"); got != "1" {
		t.Errorf("after scaling to 0 and back: e2e:ready=%q, want the state kept (1)", got)
	}
	phase("after-scale-to-0-and-back", 3, func() { time.Sleep(2 * time.Second) })

	// The StatefulSet deleted and created again under the same name (a new UID): its group is a
	// new, empty one; members that find the deleted set's data directory set its log aside.
	mustKubectl(ctx, t, "", "delete", "statefulset", "-n", membersNS, membersSet, "--wait=true")
	eventually(ctx, t, 3*time.Minute, "every pod gone", func() error {
		if n := len(memberPods(ctx, t)); n != 0 {
			return fmt.Errorf("%d pods", n)
		}
		return nil
	})
	mustKubectl(ctx, t, membersSetYAML, "apply", "-f", "-")
	waitMembers(ctx, t, cl, 3)
	waitGroupMembers(ctx, t, cl, 3)
	if got := serviceGet(ctx, t, dial, addr, "e2e:ready"); got != "" {
		t.Errorf("the re-created StatefulSet's group holds e2e:ready=%q from the deleted one; want a new, empty group", got)
	}
	phase("recreated-statefulset", 3, func() { time.Sleep(2 * time.Second) })
}

// changes is how many membership changes of the group the smr-cri logs show so far.
func changes(t *testing.T, cl *cluster.Cluster) int {
	t.Helper()
	all, err := cl.MembershipChanges(membersGroup)
	if err != nil {
		t.Fatal(err)
	}
	return len(all)
}

// expectChanges checks that the group's membership changes of kind op after the first since,
// in the smr-cri logs of all nodes, name exactly members ids, in that order (only the leader
// logs a change, once).
func expectChanges(t *testing.T, cl *cluster.Cluster, since int, op string, ids ...int) {
	t.Helper()
	all, err := cl.MembershipChanges(membersGroup)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, c := range all[min(since, len(all)):] {
		if c.Op == op {
			got = append(got, c.Member)
		}
	}
	if !slices.Equal(got, ids) {
		t.Errorf("membership changes %s: members %v, want %v (all changes: %+v)", op, got, ids, all)
	}
}

// serviceGet reads key through the replicated Service ("" when absent), retrying while the
// Service's endpoints settle.
func serviceGet(ctx context.Context, t *testing.T, dial func(context.Context, string, string) (net.Conn, error), addr, key string) string {
	t.Helper()
	var val string
	eventually(ctx, t, 2*time.Minute, "GET "+key+" through the service", func() error {
		rdb := workload{Addr: addr, Dial: dial}.client()
		defer rdb.Close()
		v, err := rdb.Get(ctx, key).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		val = v
		return nil
	})
	return val
}

// memberPods maps each running replica pod of the set to its node.
func memberPods(ctx context.Context, t *testing.T) map[string]string {
	t.Helper()
	out := mustKubectl(ctx, t, "", "get", "pods", "-n", membersNS, "-l", "app="+membersSet, "-o",
		`jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName}={.metadata.deletionTimestamp} {end}`)
	m := map[string]string{}
	for _, f := range strings.Fields(out) {
		parts := strings.SplitN(f, "=", 3)
		if len(parts) == 3 && parts[1] != "" && parts[2] == "" {
			m[parts[0]] = parts[1]
		}
	}
	return m
}

// waitMembers waits until pods 0..n-1 of the set are Ready.
func waitMembers(ctx context.Context, t *testing.T, cl *cluster.Cluster, n int) {
	t.Helper()
	eventually(ctx, t, 5*time.Minute, fmt.Sprintf("%d Ready replicas", n), func() error {
		args := []string{"wait", "-n", membersNS, "--for=condition=Ready", "--timeout=10s"}
		for i := range n {
			args = append(args, fmt.Sprintf("pod/%s-%d", membersSet, i))
		}
		_, err := kubectl(ctx, t, "", args...)
		return err
	})
}

// waitGroupMembers waits until every member of the group (smr-cri status on every node) is
// serving, knows the same leader, and lists exactly members 1..n, with none catching up.
func waitGroupMembers(ctx context.Context, t *testing.T, cl *cluster.Cluster, n int) {
	t.Helper()
	want := make([]uint64, n)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	eventually(ctx, t, 5*time.Minute, fmt.Sprintf("group %s with members %v", membersGroup, want), func() error {
		var ms []nodestatus.Member
		for _, node := range cl.Nodes {
			rep, err := nodeStatus(ctx, cl, node.Name)
			if err != nil {
				return err
			}
			for _, m := range rep.Members {
				if m.Group == membersGroup {
					ms = append(ms, m)
				}
			}
		}
		if len(ms) != n {
			return fmt.Errorf("%d members attached, want %d", len(ms), n)
		}
		leaders := map[uint64]bool{}
		for _, m := range ms {
			if !m.Healthy() {
				return fmt.Errorf("member %d on %s: %s", m.MemberID, m.Node, m.Problem())
			}
			leaders[m.Leader] = true
			if peers := slices.Sorted(slices.Values(m.Peers)); !slices.Equal(peers, want) {
				return fmt.Errorf("member %d lists members %v", m.MemberID, peers)
			}
			if len(m.Learners) > 0 || m.CatchingUp {
				return fmt.Errorf("member %d: learners %v, catching up %v", m.MemberID, m.Learners, m.CatchingUp)
			}
		}
		if len(leaders) != 1 {
			return fmt.Errorf("members name leaders %v", slices.Collect(maps.Keys(leaders)))
		}
		return nil
	})
}

// membersDiverged waits until the n replicas' own Redis hold the same state and returns how
// many differ from replica 0 when the wait ends.
func membersDiverged(ctx context.Context, t *testing.T, cl *cluster.Cluster, n int) int {
	t.Helper()
	read := func() (map[string]map[string]string, error) { return appStates(ctx, cl, membersNS, memberPods(ctx, t)) }
	first := membersSet + "-0"
	var last map[string]map[string]string
	var err error
	deadline := time.Now().Add(time.Minute)
	for {
		var states map[string]map[string]string
		if states, err = read(); err == nil && len(states) == n {
			last = states
			differ := 0
			for _, st := range states {
				if !maps.Equal(st, states[first]) {
					differ++
				}
			}
			if differ == 0 {
				return 0
			}
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if last == nil {
		t.Errorf("could not read the %d replicas' states: %v", n, err)
		return n
	}
	differ := 0
	for pod, st := range last {
		if !maps.Equal(st, last[first]) {
			differ++
			t.Errorf("replica %s differs from %s: %s", pod, first, stateDiff(last[first], st))
		}
	}
	return differ
}
