package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/test/lab/cluster"
)

// Scenarios where a replica's app changes under smr-cri (issue 13): its container restarts empty
// in the same sandbox, every replica's does at once, or it pauses past the app timeout. Each
// must end with the replica repaired through the one repair path
// (its RepairFinished event names the cause), every member serving, and the usual checks of
// scenario (porcupine, lost writes, every app compared directly).

// appContainer is the name of the replicated app's container in redisSetYAML.
const appContainer = "redis"

var (
	faultedMu sync.Mutex
	faulted   = map[string]bool{} // replica pods a single-replica fault of this run hit
)

// victimPod picks the replica pod a single-replica fault hits: the leader's or a follower's,
// one that no such fault hit before in this run if there is one. smr-cri stops repairing a
// replica after a few repairs within minutes (a repair loop), and the scenarios of one run
// follow each other within minutes: spreading the faults keeps each one a first fault.
func victimPod(ctx context.Context, t *testing.T, cl *cluster.Cluster, leader bool) string {
	t.Helper()
	node, _ := leaderNode(ctx, t, cl)
	var candidates []string
	for pod, n := range replicaNodes(ctx, t) {
		if (n == node) == leader {
			candidates = append(candidates, pod)
		}
	}
	if len(candidates) == 0 {
		t.Fatalf("no replica pod fits (leader=%v)", leader)
	}
	slices.Sort(candidates)
	faultedMu.Lock()
	defer faultedMu.Unlock()
	pick := candidates[0]
	for _, pod := range append(candidates, "redis-0", "redis-1", "redis-2") { // then any other
		if !faulted[pod] {
			pick = pod
			break
		}
	}
	faulted[pick] = true
	return pick
}

// signalApp sends sig to the app process (redis-server, the container's main process) of pod,
// found through its node's containerd.
func signalApp(ctx context.Context, t *testing.T, cl *cluster.Cluster, pod string, sig syscall.Signal) {
	t.Helper()
	node := replicaNodes(ctx, t)[pod]
	pid, err := cl.ContainerPID(ctx, node, smrNS, pod, appContainer)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("%v to the app of %s (pid %d on %s): %v", sig, pod, pid, node, err)
	}
	t.Logf("%v to the app of %s (pid %d on %s)", sig, pod, pid, node)
}

// restartCount is how often kubelet restarted pod's app container.
func restartCount(ctx context.Context, t *testing.T, pod string) int {
	t.Helper()
	out := mustKubectl(ctx, t, "", "get", "pod", "-n", smrNS, pod, "-o",
		`jsonpath={.status.containerStatuses[?(@.name=="`+appContainer+`")].restartCount}`)
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("restart count of %s: %q", pod, out)
	}
	return n
}

// repairs counts pod's RepairFinished events (their counts summed): done, those that say the
// replica was repaired for cause (one of the causes separated by "|"); failed, those that say
// a repair failed.
func repairs(ctx context.Context, t *testing.T, pod, cause string) (done, failed int) {
	t.Helper()
	out := mustKubectl(ctx, t, "", "get", "events", "-n", smrNS, "--field-selector", "involvedObject.name="+pod, "-o",
		`jsonpath={range .items[*]}{.reason}{"\t"}{.count}{"\t"}{.message}{"\n"}{end}`)
	for _, line := range strings.Split(out, "\n") {
		f := strings.SplitN(line, "\t", 3)
		if len(f) != 3 || f[0] != "RepairFinished" {
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil || n < 1 {
			n = 1
		}
		switch {
		case slices.ContainsFunc(strings.Split(cause, "|"), func(c string) bool { return strings.Contains(f[2], "repaired (cause "+c+")") }):
			done += n
		case strings.Contains(f[2], "failed"):
			failed += n
			t.Logf("%s: %s", pod, f[2])
		}
	}
	return done, failed
}

// repairWatch remembers pods' repair events before a fault, to wait for new ones after it.
type repairWatch struct {
	cause  string
	done   map[string]int
	failed map[string]int
}

func watchRepairs(ctx context.Context, t *testing.T, cause string, pods ...string) repairWatch {
	t.Helper()
	w := repairWatch{cause: cause, done: map[string]int{}, failed: map[string]int{}}
	for _, pod := range pods {
		w.done[pod], w.failed[pod] = repairs(ctx, t, pod, cause)
	}
	return w
}

// wait waits until every watched pod recorded a new repair of the cause, fails on a failed
// repair, then waits until the 3 pods are Ready and every member serves.
func (w repairWatch) wait(ctx context.Context, t *testing.T, cl *cluster.Cluster, timeout time.Duration) {
	t.Helper()
	eventually(ctx, t, timeout, "a finished repair (cause "+w.cause+") of every faulted replica", func() error {
		var missing []string
		for pod, before := range w.done {
			done, failed := repairs(ctx, t, pod, w.cause)
			if failed > w.failed[pod] {
				t.Fatalf("%s: a repair failed (see the RepairFinished events above)", pod)
			}
			if done <= before {
				missing = append(missing, pod)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("no new RepairFinished event (cause %s) on %v", w.cause, missing)
		}
		return nil
	})
	waitServing(ctx, t, cl)
}

// waitServing waits until the 3 replica pods are Ready and every member of the replicated set,
// as its node's smr-cri reports it, serves and knows a leader.
func waitServing(ctx context.Context, t *testing.T, cl *cluster.Cluster) {
	t.Helper()
	waitRedisSet(ctx, t)
	eventually(ctx, t, 2*time.Minute, "every member of the replicated set serving", func() error {
		var ms []string
		for _, n := range cl.Nodes {
			rep, err := nodeStatus(ctx, cl, n.Name)
			if err != nil {
				return err
			}
			for _, m := range rep.Members {
				if !strings.HasPrefix(m.Pod, smrNS+"/redis-") {
					continue
				}
				if !m.Healthy() {
					return fmt.Errorf("%s (member %d on %s): %s", m.Pod, m.MemberID, n.Name, m.Problem())
				}
				ms = append(ms, m.Pod)
			}
		}
		if len(ms) != 3 {
			return fmt.Errorf("%d members reported (%v), want 3", len(ms), ms)
		}
		return nil
	})
}

// appRestartCauses: smr-cri fences a replica whose app container exited when its poll of the
// runtime finds the exit (container-exit), or at the latest when kubelet creates the container
// again (container-restart), whichever comes first; one repair either way.
const appRestartCauses = replication.CauseContainerExit + "|" + replication.CauseContainerRestart

// TestReplicatedRestartApp: one replica's app (redis-server) is killed with SIGKILL, as by a
// crash or the OOM killer; kubelet creates its container again in the same sandbox, empty.
// smr-cri fences that replica (at the exit its poll finds, or at the CreateContainer), its pod
// goes not Ready through the readiness gate smr.io/replica-serving, and its app is rebuilt
// from the log.
func TestReplicatedRestartApp(t *testing.T) {
	cl := requireCluster(t)
	ctx := context.Background()
	deployRedisSet(ctx, t, cl)
	victim := victimPod(ctx, t, cl, true) // the leader's app: its clients' reads are local
	scenario(t, "restart-app-container", otherNode(cl, replicaNodes(ctx, t)[victim]), func(ctx context.Context, t *testing.T) {
		w := watchRepairs(ctx, t, appRestartCauses, victim)
		notServing := watchNotServing(ctx, t, victim)
		before := restartCount(ctx, t, victim)
		signalApp(ctx, t, cl, victim, syscall.SIGKILL)
		defer func() {
			if seen := notServing(); seen == "" {
				t.Errorf("%s: condition %s never seen False during the repair", victim, replication.ConditionReplicaServing)
			} else {
				t.Logf("%s went not ready during the repair: %s", victim, seen)
			}
		}()
		eventually(ctx, t, 2*time.Minute, "kubelet restarts the app container", func() error {
			if n := restartCount(ctx, t, victim); n <= before {
				return fmt.Errorf("%s restart count %d", victim, n)
			}
			return nil
		})
		w.wait(ctx, t, cl, 3*time.Minute)
	})
}

// TestReplicatedRestartEveryApp: every replica's app is killed at nearly the same moment (all
// hit the same memory limit: they hold the same data). Every app restarts empty; the group must
// still recover every acknowledged write from its log.
func TestReplicatedRestartEveryApp(t *testing.T) {
	cl := requireCluster(t)
	scenario(t, "restart-every-app", cl.Nodes[0].Name, func(ctx context.Context, t *testing.T) {
		pods := []string{"redis-0", "redis-1", "redis-2"}
		w := watchRepairs(ctx, t, appRestartCauses, pods...)
		for _, pod := range pods {
			signalApp(ctx, t, cl, pod, syscall.SIGKILL)
		}
		w.wait(ctx, t, cl, 4*time.Minute) // kubelet's back-off grows with each restart of a container
	})
}

// watchNotServing polls pod's smr.io/replica-serving condition until the returned function is
// called, which reports the first False it saw ("" if none): a repair keeps the replica not
// serving for seconds (kubelet's restart of the container, the replay), polled every 200 ms.
func watchNotServing(ctx context.Context, t *testing.T, pod string) func() string {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	var seen string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			out, err := kubectl(ctx, t, "", "get", "pod", "-n", smrNS, pod, "-o",
				`jsonpath={range .status.conditions[?(@.type=="`+replication.ConditionReplicaServing+`")]}{.status} {.reason}: {.message}{end}`)
			if err == nil && strings.HasPrefix(out, "False ") {
				seen = out
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return func() string {
		cancel()
		<-done
		return seen
	}
}

// slowPause is how long the slow replica's app stays stopped: past the app timeout (30 s), so
// the requests in flight there time out on this replica only.
const slowPause = 35 * time.Second

// TestReplicatedSlowReplica: one follower's app is paused (SIGSTOP) longer than the app
// timeout, then resumed (SIGCONT). Its sessions break on that replica only; it must repair
// (cause session-broken) rather than skip their later requests.
func TestReplicatedSlowReplica(t *testing.T) {
	cl := requireCluster(t)
	ctx := context.Background()
	deployRedisSet(ctx, t, cl)
	victim := victimPod(ctx, t, cl, false)
	scenario(t, "slow-replica", cl.Nodes[0].Name, func(ctx context.Context, t *testing.T) {
		w := watchRepairs(ctx, t, replication.CauseSessionBroken, victim)
		signalApp(ctx, t, cl, victim, syscall.SIGSTOP)
		resumed := false
		resume := func() {
			if !resumed {
				resumed = true
				signalApp(ctx, t, cl, victim, syscall.SIGCONT)
			}
		}
		defer resume() // never leave the app stopped, whatever fails
		time.Sleep(slowPause)
		resume()
		w.wait(ctx, t, cl, 3*time.Minute)
	})
}
