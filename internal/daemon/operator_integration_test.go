package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"

	dto "github.com/prometheus/client_model/go"

	"github.com/smr-io/smr-cri/internal/monitoring"
	"github.com/smr-io/smr-cri/internal/nodestatus"
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// TestIntegrationStatusAndMetrics runs what an operator looks at on a node,
// against a real `smr-cri serve` with three Redis pods of one group on a
// private containerd, after a workload through the pods' IPs:
//   - `smr-cri status -o json` and the table, read from serve's root-only
//     status socket: three members, one leader, all serving and caught up;
//   - `smr-cri trace --health-addr`, the DaemonSet container's /metrics,
//     which re-exports serve's metrics from that socket: every metric name
//     manifests/monitoring's rules and dashboard use exists (names another
//     issue adds are reported as pending), and the core series moved.
func TestIntegrationStatusAndMetrics(t *testing.T) {
	nodelab.RequireIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Audits every second while there are writes, so the audit series move.
	g := startReplicatedGroup(t, ctx, groupSpec{app: "redis", image: nodelab.RedisImage, ports: "6379/resp",
		serveArgs: []string{"--audit-interval", "1s", "--audit-every", "20"}})
	statusSock := nodestatus.DefaultSocket(g.s.sock)

	const writes = 60
	for i, p := range g.pods {
		c := redis.NewClient(&redis.Options{Addr: net.JoinHostPort(p.ip, "6379"), Protocol: 2, DisableIdentity: true, MaxRetries: -1})
		for n := range writes / len(g.pods) {
			retry(t, ctx, fmt.Sprintf("SET through %s", p.name), func() error {
				return c.Set(ctx, fmt.Sprintf("k%d-%d", i, n), "v", 0).Err()
			})
		}
		c.Close()
	}

	// One refused request (push mode is not replicated), so the refusal
	// counter the dashboard plots exists and moved.
	conn, err := net.Dial("tcp", net.JoinHostPort(g.pods[0].ip, "6379"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	if reply, _ := io.ReadAll(conn); !strings.Contains(string(reply), "-ERR smr-cri") {
		t.Errorf("SUBSCRIBE got %q, want an smr-cri protocol error", reply)
	}
	conn.Close()

	status := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, g.s.bin, append([]string{"status", "--socket", statusSock}, args...)...).CombinedOutput()
		return string(out), err
	}
	var r nodestatus.Report
	waitFor(t, ctx, "three serving members, one leader, every app caught up", func() (bool, string) {
		out, err := status("-o", "json")
		if err != nil {
			return false, fmt.Sprintf("%v: %s", err, out)
		}
		if r, err = nodestatus.Decode([]byte(out)); err != nil {
			return false, err.Error()
		}
		leaders := 0
		for _, m := range r.Members {
			if m.Role == "leader" {
				leaders++
			}
			if !m.Healthy() || m.Lag != 0 || m.Applied < writes {
				return false, out
			}
		}
		return len(r.Members) == 3 && leaders == 1, out
	})
	for i, m := range r.Members {
		if m.Group != "smrtest.redis" || m.MemberID != uint64(i+1) || m.Pod != fmt.Sprintf("smrtest/redis-%d", i) ||
			m.LogBytes <= 0 || m.Term == 0 || m.Commit != r.Members[0].Commit {
			t.Errorf("member %+v", m)
		}
	}
	table, err := status()
	if err != nil || !strings.Contains(table, "smrtest.redis") || strings.Count(table, "serving") != 3 || strings.Contains(table, "<-") {
		t.Errorf("status table (%v):\n%s", err, table)
	}
	t.Logf("smr-cri status:\n%s", table)

	// The DaemonSet's trace container, as a real process.
	addr := freeport.AddrT(t)
	trace := exec.Command(g.s.bin, "trace", "--follow", "--file", g.s.logPath, "--socket", g.s.sock, "--health-addr", addr)
	trace.Stdout, trace.Stderr = io.Discard, io.Discard
	exited, err := nodelab.StartChild(trace)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = trace.Process.Signal(syscall.SIGTERM)
		<-exited
	})
	var fams map[string]*dto.MetricFamily
	retry(t, ctx, "scrape the trace container's /metrics with serve's metrics in it, after an audit all three replicas agree with", func() error {
		fams, err = scrape(ctx, "http://"+addr+"/metrics")
		if err == nil && fams["smr_commits_total"] == nil {
			err = fmt.Errorf("no smr_commits_total among %d families", len(fams))
		}
		if agree := sampleSum(fams["smr_audits_total"], "result", "agree"); err == nil && agree < 3 {
			err = fmt.Errorf("smr_audits_total{result=agree} = %v, want 3 (one audit, every replica agreeing)", agree)
		}
		return err
	})
	exported := map[string]bool{}
	for n := range fams {
		exported[n] = true
	}
	names, err := monitoring.MetricNames(filepath.Join("..", "..", "manifests", "monitoring"))
	if err != nil {
		t.Fatal(err)
	}
	missing, pending := monitoring.Missing(names, exported)
	for _, p := range pending {
		t.Logf("PENDING metric used by manifests/monitoring, not exported yet: %s", p)
	}
	if len(missing) > 0 {
		t.Errorf("manifests/monitoring uses metrics serve does not export: %v", missing)
	}
	// The core series moved with the workload, not only exist.
	for _, c := range []struct {
		name string
		min  float64
	}{
		{"smr_commits_total", 3 * writes}, // every replica applies every SET
		{"smr_proposals_total", writes},
		{"smr_applied_index", writes},
		{"smr_apply_lag_seconds", writes}, // observations on the proposing replicas
		{"smr_app_exec_seconds", 3 * writes},
		{"smr_leader", 1},
		{"smr_daemon_up", 1},
		{"smr_bad_requests_total", 1},
		{"smr_raft_log_bytes", 1}, // published at the members' start, not only at snapshots
	} {
		if got := total(fams[c.name]); got < c.min {
			t.Errorf("%s = %v after the workload, want at least %v", c.name, got, c.min)
		}
	}
	if got := total(fams["smr_replica_diverged"]); got != 0 || len(fams["smr_replica_diverged"].GetMetric()) != 3 {
		t.Errorf("smr_replica_diverged: %v series summing to %v, want 3 at 0", len(fams["smr_replica_diverged"].GetMetric()), got)
	}
}

// sampleSum sums the samples of f whose label name has value.
func sampleSum(f *dto.MetricFamily, name, value string) float64 {
	var s float64
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == name && l.GetValue() == value {
				s += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return s
}

func scrape(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// total sums a family's values: counters and gauges, or histogram counts.
func total(f *dto.MetricFamily) float64 {
	var s float64
	for _, m := range f.GetMetric() {
		switch {
		case m.Counter != nil:
			s += m.GetCounter().GetValue()
		case m.Gauge != nil:
			s += m.GetGauge().GetValue()
		case m.Histogram != nil:
			s += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return s
}
