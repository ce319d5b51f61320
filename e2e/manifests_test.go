package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/cluster"
)

// TestManifestsServerSide sends every kustomization of manifests/ and examples/ (and the local
// cluster's overlay of the DaemonSet) to the API server with strict server-side validation: the
// API server's own schemas, admission and field validation judge them, not a client-side copy.
// The namespace is applied for real first, as a dry run of its contents needs it to exist.
func TestManifestsServerSide(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root := cl.RepoRoot
	mustKubectl(ctx, t, "", "apply", "-f", filepath.Join(root, "manifests", "namespace.yaml"))
	dryRun := []string{"--dry-run=server", "--validate=strict"}
	for _, tc := range []struct {
		name  string
		apply func() (string, error)
		want  []string // objects the dry run must report
	}{
		{"manifests", func() (string, error) {
			return kubectl(ctx, t, "", append([]string{"apply", "-k", filepath.Join(root, "manifests")}, dryRun...)...)
		}, []string{"namespace/smr-system", "serviceaccount/smr-cri", "clusterrole.rbac.authorization.k8s.io/smr-cri",
			"role.rbac.authorization.k8s.io/smr-cri-ca", "daemonset.apps/smr-cri"}},
		{"manifests/uninstall", func() (string, error) {
			return kubectl(ctx, t, "", append([]string{"apply", "-k", filepath.Join(root, "manifests", "uninstall")}, dryRun...)...)
		}, []string{"daemonset.apps/smr-cri-uninstall"}},
		{"examples/redis", func() (string, error) {
			return kubectl(ctx, t, "", append([]string{"apply", "-k", filepath.Join(root, "examples", "redis")}, dryRun...)...)
		}, []string{"service/redis", "statefulset.apps/redis", "networkpolicy.networking.k8s.io/"}},
		{"local cluster overlay", func() (string, error) {
			out, err := cl.ApplyTraceDaemonSet(ctx, dryRun...)
			return string(out), err
		}, []string{"daemonset.apps/smr-cri"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := tc.apply()
			if err != nil {
				t.Fatalf("server-side dry run: %v\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("dry run output lacks %q:\n%s", w, out)
				}
			}
			if !strings.Contains(out, "(server dry run)") {
				t.Errorf("not a server dry run:\n%s", out)
			}
			t.Logf("%s", out)
		})
	}
	// Strict validation is what makes the passes above mean something: an unknown field fails.
	t.Run("unknown field rejected", func(t *testing.T) {
		bad := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: strict-check, namespace: smr-system}\ndata: {a: b}\nbogusField: 1\n"
		out, err := kubectl(ctx, t, bad, append([]string{"apply", "-f", "-"}, dryRun...)...)
		if err == nil || !strings.Contains(err.Error(), "bogusField") {
			t.Fatalf("want an error naming bogusField, got err=%v out=%s", err, out)
		}
	})
}

// TestTraceDaemonSet runs the project's trace container as the DaemonSet smr-system/smr-cri
// (manifests/ through the local cluster's overlay, image localhost/smr-cri:dev imported into
// every node), writes through the replicated Redis Service, and reads the ordering traces the
// way a user would: kubectl logs of the DaemonSet's pods.
func TestTraceDaemonSet(t *testing.T) {
	cl := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	deployRedisSet(ctx, t, cl)
	deployTraceDaemonSet(ctx, t, cl)
	ready := strings.TrimSpace(mustKubectl(ctx, t, "", "get", "ds", "-n", "smr-system", "smr-cri", "-o",
		"jsonpath={.status.desiredNumberScheduled}/{.status.numberReady}"))
	if want := fmt.Sprintf("%d/%d", len(cl.Nodes), len(cl.Nodes)); ready != want {
		t.Fatalf("DaemonSet desired/ready = %s, want %s", ready, want)
	}

	// The trace lines name the command, not its key, so the check counts: each pod's SET commits
	// of the group before and after n writes through the Service. Every replica's node commits
	// every entry, and each node's trace pod streams that node's log.
	group := smrNS + ".redis"
	logs := func() map[string][]string {
		out := mustKubectl(ctx, t, "", "logs", "-n", "smr-system", "-l", "app.kubernetes.io/name=smr-cri",
			"--prefix", "--tail=-1", "--max-log-requests=10")
		return commitLines(out, group, `op="SET"`)
	}
	before := logs()
	dial, addr := serviceClient(ctx, t, cl, cl.Nodes[0].Name)
	rdb := workload{Addr: addr, Dial: dial}.client()
	defer rdb.Close()
	const n = 5
	for i := range n {
		key := fmt.Sprintf("trace-ds-%d", i)
		eventually(ctx, t, time.Minute, "SET "+key+" through the replicated service", func() error {
			return rdb.Set(ctx, key, "1", 0).Err()
		})
	}
	var after map[string][]string
	eventually(ctx, t, 2*time.Minute, fmt.Sprintf("%d more SET commits of %s in kubectl logs from 2 nodes", n, group), func() error {
		after = logs()
		var grew []string
		for pod, lines := range after {
			if len(lines) >= len(before[pod])+n {
				grew = append(grew, pod)
			}
		}
		if len(grew) < 2 {
			return fmt.Errorf("pods with %d new SET commits: %v (before %d pods, after %d)", n, grew, len(before), len(after))
		}
		return nil
	})
	for pod, lines := range after {
		t.Logf("%s: %d SET commits of %s; last: %s", pod, len(lines), group, lines[len(lines)-1])
	}
}

// commitLines maps each pod of `kubectl logs --prefix` output ("[pod/NAME/trace] ...") to its
// smr=commit lines of group that contain op.
func commitLines(out, group, op string) map[string][]string {
	pods := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		prefix, rest, ok := strings.Cut(line, "] ")
		if !ok || !strings.Contains(rest, "smr=commit") || !strings.Contains(rest, " group="+group+" ") || !strings.Contains(rest, op) {
			continue
		}
		pod := strings.TrimPrefix(prefix, "[")
		pods[pod] = append(pods[pod], rest)
	}
	return pods
}

// deployTraceDaemonSet runs the trace container as the DaemonSet smr-system/smr-cri (manifests/
// through the local cluster's overlay), waits for its rollout, and deletes it when the test
// ends: other scenarios restart smr-cri and the whole cluster, so no extra pods stay behind.
func deployTraceDaemonSet(ctx context.Context, t *testing.T, cl *cluster.Cluster) {
	t.Helper()
	if out, err := cl.ApplyTraceDaemonSet(ctx); err != nil {
		t.Fatalf("apply the trace DaemonSet: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if _, err := kubectl(context.Background(), t, "", "delete", "-n", "smr-system", "daemonset", "smr-cri", "--wait=true", "--timeout=2m"); err != nil {
			t.Errorf("delete the trace DaemonSet: %v", err)
		}
	})
	mustKubectl(ctx, t, "", "rollout", "status", "-n", "smr-system", "ds/smr-cri", "--timeout=3m")
}
