package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/cluster"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// kube is the cluster every test of the package shares; nil when integration tests are off.
var kube *cluster.Cluster

// TestMain brings the cluster up once for the whole package (it takes a minute or more) and
// takes it down at the end, then checks that nothing of it is left on the machine.
func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Getenv(nodelab.IntegrationEnv) != "1" {
		return m.Run() // every test skips with a message
	}
	ctx := context.Background()
	// Another run of this package (hack/test.sh's go test ./... beside make e2e) would replace
	// the cluster under this one: wait for it instead.
	release, err := cluster.LockSession(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer release()
	before, err := hostSnapshot(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	upCtx, cancel := context.WithTimeout(ctx, 30*time.Minute) // includes a cold Kubernetes build
	kube, err = cluster.Up(upCtx, cluster.Config{}, os.Stderr)
	cancel()
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cluster up:", err)
	} else {
		code = m.Run()
	}
	var keep string
	if code != 0 {
		root, _ := nodelab.RepoRoot()
		keep = root + "/_out/e2e-logs"
		fmt.Fprintln(os.Stderr, "e2e: failed; keeping the cluster logs in", keep)
	}
	downCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := cluster.Down(downCtx, cluster.Config{}, os.Stderr, cluster.DownOptions{KeepLogsIn: keep}); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cluster down:", err)
		code = 1
	}
	after, err := hostSnapshot(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if left := leftovers(before, after); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: cluster down left behind:\n  %s\n", strings.Join(left, "\n  "))
		code = 1
	}
	fmt.Println(summary())
	return code
}

// snapshot is what the cluster may change on the host and must restore.
type snapshot struct {
	network  []string // cluster links, namespaces, routes
	iptables string   // host iptables rules (counters stripped)
	procs    int      // processes naming the state directory
	files    []string // files outside the state directory pointing into it
	dirGone  bool
}

func hostSnapshot(ctx context.Context) (snapshot, error) {
	var s snapshot
	s.network = cluster.NetworkLeftovers(ctx)
	for _, table := range []string{"filter", "nat", "mangle"} {
		out, err := exec.CommandContext(ctx, "iptables", "-w", "-t", table, "-S").Output()
		if err != nil {
			return s, fmt.Errorf("iptables -t %s -S: %w", table, err)
		}
		s.iptables += ownRules(string(out))
	}
	c, err := cluster.Config{}.Resolve()
	if err != nil {
		return s, err
	}
	s.procs = cluster.MeasureRSS(c).Procs
	s.files = cluster.LeftoverFiles(c)
	_, err = os.Stat(c.Dir)
	s.dirGone = os.IsNotExist(err)
	return s, nil
}

// ownRules keeps the host rules the cluster could have made (Kubernetes and CNI chains, the
// cluster's addresses); other engineers' tests change unrelated rules concurrently.
func ownRules(rules string) string {
	var b strings.Builder
	for _, line := range strings.Split(rules, "\n") {
		if strings.Contains(line, "KUBE-") || strings.Contains(line, "198.18.0.") || strings.Contains(line, "198.19.1.") ||
			strings.Contains(line, "198.19.2.") || strings.Contains(line, "198.19.3.") || strings.Contains(line, cluster.BridgeName) {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func leftovers(before, after snapshot) []string {
	var left []string
	left = append(left, after.network...)
	if after.iptables != before.iptables {
		left = append(left, "host iptables rules changed:\n"+after.iptables)
	}
	if after.procs > 0 {
		left = append(left, fmt.Sprintf("%d processes naming the state directory", after.procs))
	}
	left = append(left, after.files...)
	if !after.dirGone {
		left = append(left, "the state directory")
	}
	return left
}

// requireCluster skips without SMR_INTEGRATION=1 and fails if the cluster did not come up.
func requireCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	nodelab.RequireIntegration(t)
	if kube == nil {
		t.Fatal("cluster is not up (see TestMain output)")
	}
	return kube
}

// kubectl runs kubectl with the admin kubeconfig; stdin feeds `apply -f -`.
func kubectl(ctx context.Context, t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	out, err := kube.KubectlIn(ctx, stdin, args...)
	return string(out), err
}

// mustKubectl is kubectl that fails the test on error.
func mustKubectl(ctx context.Context, t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := kubectl(ctx, t, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// createNamespace creates namespace ns and deletes it (without waiting) when the test ends.
func createNamespace(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	mustKubectl(ctx, t, "", "create", "namespace", ns)
	t.Cleanup(func() { _, _ = kubectl(context.Background(), t, "", "delete", "namespace", ns, "--wait=false") })
}

// eventually retries f every second until it succeeds or the timeout passes (kube-proxy and
// endpoints need a moment after a pod turns Ready). It is a wait, not a timed assertion.
func eventually(ctx context.Context, t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}
