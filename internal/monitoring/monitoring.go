// Package monitoring knows what manifests/monitoring (the alert rules and the
// Grafana dashboard) expects smr-cri to export: the metric names they use,
// so tests check them against a real `smr-cri serve`, and which of them are
// still to come from other work.
package monitoring

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Files of manifests/monitoring that name metrics.
var Files = []string{"rules.yaml", "dashboard.json"}

// Pending are metric names the rules and dashboard use that come from other
// issues' work (the issue that adds each): a test reports them as missing
// instead of failing, until they exist. Empty: every name they use is
// exported (#12's log bytes and snapshot index are smr_raft_log_bytes and
// smr_raft_snapshot_index; #13 added smr_replica_state, smr_repairs_total,
// smr_replica_diverged and smr_audits_total; #15 smr_connection_panics_total).
var Pending = map[string]string{}

// FromTrace are exported by `smr-cri trace --health-addr` itself, beside
// serve's metrics.
var FromTrace = []string{"smr_daemon_up", "smr_trace_lines_total", "smr_trace_reopens_total"}

var metricName = regexp.MustCompile(`\bsmr_[a-z0-9_]+`)

// MetricNames returns the metric family names used in dir's Files, sorted:
// histogram series (_bucket, _sum, _count) are reported by family name.
func MetricNames(dir string) ([]string, error) {
	seen := map[string]bool{}
	for _, f := range Files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, fmt.Errorf("monitoring: %w", err)
		}
		for _, n := range metricName.FindAllString(string(b), -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if strings.HasSuffix(n, suffix) && !strings.HasSuffix(n, "_total"+suffix) {
					n = strings.TrimSuffix(n, suffix)
				}
			}
			seen[n] = true
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

// Missing splits the names not in exported into missing (an error) and
// pending (expected from other work, with the issue that adds each).
func Missing(names []string, exported map[string]bool) (missing, pending []string) {
	for _, n := range names {
		if exported[n] {
			continue
		}
		if why, ok := Pending[n]; ok {
			pending = append(pending, n+" (from "+why+")")
		} else {
			missing = append(missing, n)
		}
	}
	return missing, pending
}
