package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/kubecore"
	"github.com/smr-io/smr-cri/internal/nodestatus"
	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/test/lab/cluster"
)

// TestOperatorView checks what an operator sees, the way they would see it, on the replicated
// Redis: `kubectl smr status` (the plugin binary found by kubectl on PATH, through the API
// server's pods/exec into the DaemonSet's pods) and `smr-cri status` on each node; the leader's
// node cut off (its member shown unhealthy in both, a new leader elected, then all healthy
// again); the pods' Events read from the API after that leader change and after a pod
// delete; and smr-cri killed on a follower's node (its member shown unknown, then healthy again
// after the restart).
func TestOperatorView(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	deployRedisSet(ctx, t, cl)
	deployTraceDaemonSet(ctx, t, cl)
	plugin := buildPlugin(ctx, t, cl)
	api, err := kubecore.FromKubeconfig(cl.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	group := smrNS + ".redis"

	// Both views agree on a healthy group: three serving members, one leader.
	var ms []nodestatus.Member
	eventually(ctx, t, 2*time.Minute, "kubectl smr status: 3 healthy members, one leader", func() error {
		ms, err = plugin.members(ctx)
		if err != nil {
			return err
		}
		return allHealthy(ms)
	})
	t.Logf("kubectl smr status:\n%s", plugin.table(ctx, t, "-n", smrNS))
	for _, m := range ms {
		r, err := nodeStatus(ctx, cl, m.Node)
		if err != nil {
			t.Fatalf("smr-cri status on %s: %v", m.Node, err)
		}
		var own []nodestatus.Member // other tests' groups may still be leaving the node
		for _, n := range r.Members {
			if n.Group == group {
				own = append(own, n)
			}
		}
		if len(own) != 1 || own[0].MemberID != m.MemberID {
			t.Errorf("smr-cri status on %s: %+v, want member %d of %s", m.Node, r.Members, m.MemberID, group)
		}
	}
	leader := leaderOf(ms)

	// Cut the leader's node off: its member loses the leader (shown unhealthy on the node and in
	// the plugin, which still reaches it through the API server), the others elect a new leader,
	// and the new leader records LeaderElected on its pod. After the heal, all healthy again.
	if err := cl.Partition(ctx, leader.Node); err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_ = cl.Heal(context.Background(), leader.Node)
		}
	}()
	var newLeader nodestatus.Member
	eventually(ctx, t, 2*time.Minute, "the cut-off member unhealthy and a new leader", func() error {
		r, err := nodeStatus(ctx, cl, leader.Node)
		if err != nil {
			return err
		}
		if len(r.Members) != 1 || r.Members[0].Healthy() {
			return fmt.Errorf("smr-cri status on the cut-off node: %+v", r.Members)
		}
		ms, err := plugin.members(ctx)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.MemberID == leader.MemberID && m.Healthy() {
				return fmt.Errorf("kubectl smr status shows the cut-off member %d healthy: %+v", m.MemberID, m)
			}
			if m.Role == "leader" && m.MemberID != leader.MemberID && m.Term > leader.Term {
				newLeader = m
			}
		}
		if newLeader.MemberID == 0 {
			return fmt.Errorf("no new leader yet: %+v", ms)
		}
		return nil
	})
	t.Logf("kubectl smr status with member %d cut off:\n%s", leader.MemberID, plugin.table(ctx, t, "-n", smrNS))
	eventually(ctx, t, time.Minute, "a LeaderElected event on the new leader's pod", func() error {
		return hasEvent(ctx, api, newLeader.Pod, podevents.ReasonLeaderElected,
			fmt.Sprintf("member %d is the leader of group %s (term %d", newLeader.MemberID, group, newLeader.Term), "")
	})
	if err := cl.Heal(ctx, leader.Node); err != nil {
		t.Fatal(err)
	}
	healed = true
	eventually(ctx, t, 2*time.Minute, "all healthy again after the heal", func() error {
		ms, err := plugin.members(ctx)
		if err != nil {
			return err
		}
		if err := allHealthy(ms); err != nil {
			return err
		}
		r, err := nodeStatus(ctx, cl, leader.Node)
		if err != nil || len(r.Members) != 1 || !r.Members[0].Healthy() {
			return fmt.Errorf("smr-cri status on the healed node: %+v %v", r.Members, err)
		}
		return nil
	})

	// Delete a replica pod: its replacement (new UID) gets the attach event.
	oldUID := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "pod", "-n", smrNS, "redis-1", "-o", "jsonpath={.metadata.uid}"))
	mustKubectl(ctx, t, "", "delete", "pod", "-n", smrNS, "redis-1", "--wait=true")
	waitRedisSet(ctx, t)
	newUID := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "pod", "-n", smrNS, "redis-1", "-o", "jsonpath={.metadata.uid}"))
	if newUID == oldUID {
		t.Fatal("redis-1 kept its UID after delete")
	}
	eventually(ctx, t, time.Minute, "a ReplicaAttached event on the new redis-1", func() error {
		return hasEvent(ctx, api, smrNS+"/redis-1", podevents.ReasonAttached, "attached as member 2 of group "+group, newUID)
	})
	eventually(ctx, t, 2*time.Minute, "all healthy after the pod delete", func() error {
		ms, err := plugin.members(ctx)
		if err != nil {
			return err
		}
		return allHealthy(ms)
	})
	// Kill smr-cri on a follower's node: that node no longer answers, and its member is shown as
	// an unknown, unhealthy row from the leader's membership; after the restart, healthy again.
	ms, err = plugin.members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var victim nodestatus.Member
	for _, m := range ms {
		if m.Role != "leader" {
			victim = m
		}
	}
	if err := cl.KillSmrCRI(victim.Node); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = cl.RestartSmrCRI(context.Background(), victim.Node)
		}
	}()
	eventually(ctx, t, time.Minute, "the killed member shown unknown", func() error {
		ms, stderr, _ := plugin.membersAndErrors(ctx)
		for _, m := range ms {
			if m.MemberID == victim.MemberID && m.State == nodestatus.StateUnknown && !m.Healthy() &&
				strings.Contains(stderr, "! node "+victim.Node) {
				return nil
			}
		}
		return fmt.Errorf("member %d not shown unknown: %+v %q", victim.MemberID, ms, stderr)
	})
	out, _ := plugin.run(ctx, "-n", smrNS)
	t.Logf("kubectl smr status with smr-cri killed on %s:\n%s", victim.Node, out)
	if err := cl.RestartSmrCRI(ctx, victim.Node); err != nil {
		t.Fatal(err)
	}
	restarted = true
	eventually(ctx, t, 2*time.Minute, "all healthy after smr-cri restarted", func() error {
		ms, err := plugin.members(ctx)
		if err != nil {
			return err
		}
		return allHealthy(ms)
	})

	t.Logf("kubectl describe pod redis-1 (events):\n%s", mustKubectl(ctx, t, "", "describe", "pod", "-n", smrNS, "redis-1"))
	t.Logf("kubectl smr status -A:\n%s", plugin.table(ctx, t, "-A"))
}

// pluginRunner runs `kubectl smr status` as a user does: kubectl finds kubectl-smr on PATH.
type pluginRunner struct {
	kubectl, kubeconfig, path string
}

func buildPlugin(ctx context.Context, t *testing.T, cl *cluster.Cluster) pluginRunner {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "kubectl-smr"), "./cmd/kubectl-smr")
	cmd.Dir = cl.RepoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-smr: %v\n%s", err, out)
	}
	return pluginRunner{kubectl: cl.KubectlPath(), kubeconfig: cl.AdminKubeconfig(), path: dir + ":" + os.Getenv("PATH")}
}

func (p pluginRunner) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, p.kubectl, append([]string{"smr", "status"}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+p.path, "KUBECONFIG="+p.kubeconfig)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl smr status %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// members is `kubectl smr status redis -n e2e-smr -o json`; a node that does not answer is an
// error. membersAndErrors also returns the members when one does not, and the `!` lines.
func (p pluginRunner) members(ctx context.Context) ([]nodestatus.Member, error) {
	ms, _, err := p.membersAndErrors(ctx)
	return ms, err
}

func (p pluginRunner) membersAndErrors(ctx context.Context) ([]nodestatus.Member, string, error) {
	cmd := exec.CommandContext(ctx, p.kubectl, "smr", "status", "redis", "-n", smrNS, "-o", "json")
	cmd.Env = append(os.Environ(), "PATH="+p.path, "KUBECONFIG="+p.kubeconfig)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	var ms []nodestatus.Member
	if err := json.Unmarshal(out, &ms); err != nil {
		return nil, stderr.String(), fmt.Errorf("kubectl smr status -o json: %w (exit %v): %q %q", err, runErr, out, stderr.String())
	}
	if runErr != nil {
		return ms, stderr.String(), fmt.Errorf("kubectl smr status: %w: %s", runErr, stderr.String())
	}
	return ms, stderr.String(), nil
}

// table is `kubectl smr status ARGS` as printed for a person.
func (p pluginRunner) table(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := p.run(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// nodeStatus is `smr-cri status -o json` on node, as root on the node (the cluster's nodes
// share the host's file system).
func nodeStatus(ctx context.Context, cl *cluster.Cluster, node string) (nodestatus.Report, error) {
	out, err := exec.CommandContext(ctx, cl.SmrCRI, "status", "-o", "json", "--socket", cl.SmrStatusSocket(node)).CombinedOutput()
	if err != nil {
		return nodestatus.Report{}, fmt.Errorf("smr-cri status on %s: %w: %s", node, err, out)
	}
	return nodestatus.Decode(out)
}

func allHealthy(ms []nodestatus.Member) error {
	leaders := 0
	for _, m := range ms {
		if !m.Healthy() {
			return fmt.Errorf("member %d on %s: %s", m.MemberID, m.Node, m.Problem())
		}
		if m.Role == "leader" {
			leaders++
		}
	}
	if len(ms) != 3 || leaders != 1 {
		return fmt.Errorf("%d members, %d leaders: %+v", len(ms), leaders, ms)
	}
	return nil
}

func leaderOf(ms []nodestatus.Member) nodestatus.Member {
	for _, m := range ms {
		if m.Role == "leader" {
			return m
		}
	}
	return nodestatus.Member{}
}

// hasEvent looks for an event with reason whose message contains msg on pod (namespace/name),
// and with that involved object UID when uid is set.
func hasEvent(ctx context.Context, api *kubecore.Client, pod, reason, msg, uid string) error {
	ns, name, _ := strings.Cut(pod, "/")
	list, err := api.ListEvents(ctx, ns, "involvedObject.name="+name)
	if err != nil {
		return err
	}
	var seen []string
	for _, ev := range list.Items {
		seen = append(seen, ev.Reason+": "+ev.Message)
		if ev.Reason == reason && strings.Contains(ev.Message, msg) && (uid == "" || string(ev.InvolvedObject.UID) == uid) &&
			ev.Source.Component == "smr-cri" && ev.InvolvedObject.Kind == "Pod" {
			return nil
		}
	}
	return fmt.Errorf("no %s event %q on %s; events: %q", reason, msg, pod, seen)
}
