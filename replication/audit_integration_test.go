package replication

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smr-io/smr-cri/examples/kvstore"
	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// The audit's verdict on real Redis apps behind real raft members: writes
// made straight into some apps (around replication) are found, the
// diverged member alone is asked to repair (cause divergence), every member
// traces the verdict, and with no majority every member alarms and none
// repairs. Equal apps agree.
func TestAuditVerdictRedis(t *testing.T) {
	tests := []struct {
		name       string
		around     map[int]string // replica index -> key written straight into its app
		wantRepair []uint64       // members whose repair hook fires
		wantTrace  string         // in every member's trace
		result     map[uint64]string
	}{
		{"equal apps agree", nil, nil, "",
			map[uint64]string{1: AuditAgree, 2: AuditAgree, 3: AuditAgree}},
		{"one app written around replication", map[int]string{1: "x"}, []uint64{2}, "DIVERGED member=2",
			map[uint64]string{1: AuditAgree, 2: AuditDiverged, 3: AuditAgree}},
		{"every app different: no majority", map[int]string{0: "a", 1: "b", 2: "c"}, nil, "NO-MAJORITY",
			map[uint64]string{1: AuditNoMajority, 2: AuditNoMajority, 3: AuditNoMajority}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := newRedisCluster(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var mu sync.Mutex
			var repaired []uint64
			for _, r := range rc.replicas {
				r.exec.reportTo(r.group)
				r.exec.OnUncertain(func(c Cause) {
					mu.Lock()
					defer mu.Unlock()
					if c.Kind == CauseDivergence && strings.Contains(c.Detail, "differs from the majority") {
						repaired = append(repaired, r.id)
					}
				})
			}
			c := rc.client(t, 0, nil)
			for i := range 5 {
				if err := c.Set(ctx, fmt.Sprintf("k%d", i), "v", 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
			rc.waitCaughtUp()
			for _, r := range rc.replicas {
				prepareForks(t, r.exec)
			}
			for i, key := range tc.around {
				if err := rc.direct(t, i, 0).Set(ctx, key, "around", 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := ProposeAudit(ctx, rc.replicas[0].group, 10*time.Second, []uint64{1, 2, 3}); err != nil {
				t.Fatal(err)
			}
			counted := func(result string) float64 {
				return gathered(t, rc.reg, "smr_audits_total", map[string]string{"result": result})
			}
			waitFor(t, "every member's verdict", func() bool {
				// Every member counts its own result once; the registry is shared.
				for _, result := range []string{AuditAgree, AuditDiverged, AuditNoMajority} {
					want := 0
					for _, r := range tc.result {
						if r == result {
							want++
						}
					}
					if counted(result) != float64(want) {
						return false
					}
				}
				return true
			})
			// Every member captured copy-on-write (its Redis is on this host).
			if n := gathered(t, rc.reg, "smr_audit_captures_total", map[string]string{"path": "fork"}); n != 3 {
				t.Errorf("copy-on-write captures: %v, want 3 (one per member)", n)
			}
			time.Sleep(200 * time.Millisecond) // a wrong repair request would come now
			mu.Lock()
			got := fmt.Sprint(repaired)
			mu.Unlock()
			if got != fmt.Sprint(tc.wantRepair) {
				t.Errorf("repair requested by members %s, want %v", got, tc.wantRepair)
			}
			for _, r := range rc.replicas {
				if tr := r.traceText(); tc.wantTrace != "" && !strings.Contains(tr, tc.wantTrace) {
					t.Errorf("member %d's trace lacks %q:\n%s", r.id, tc.wantTrace, tr)
				}
				want := 0.0
				if tc.result[r.id] == AuditDiverged {
					want = 1
				}
				if v := gathered(t, rc.reg, "smr_replica_diverged", map[string]string{"member": fmt.Sprint(r.id)}); v != want {
					t.Errorf("smr_replica_diverged{member=%d} = %v, want %v", r.id, v, want)
				}
			}
		})
	}
}

// gathered sums the samples of family name in reg whose labels include want.
func gathered(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	return testcheck.MetricSum(t, reg, name, want)
}

// The audit of the HTTP example app (examples/kvstore, with its snapshot
// path): a value written straight into one app is found on that member.
func TestAuditVerdictHTTP(t *testing.T) {
	stores, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs})
	var mu sync.Mutex
	var repaired []uint64
	for _, r := range c.replicas {
		if err := r.exec.EnableSnapshots(SnapshotConfig{SnapshotPath: kvstore.StatePath}); err != nil {
			t.Fatal(err)
		}
		r.exec.reportTo(r.group)
		r.exec.OnUncertain(func(cause Cause) {
			mu.Lock()
			defer mu.Unlock()
			if cause.Kind == CauseDivergence {
				repaired = append(repaired, r.id)
			}
		})
	}
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	if code, body := do(t, client, "PUT", "http://"+c.replicas[0].addr+"/kv/k", "v"); code/100 != 2 {
		t.Fatalf("PUT through replica 1: %d %s", code, body)
	}
	c.waitCaughtUp()
	rec := httptest.NewRecorder()
	stores[2].ServeHTTP(rec, httptest.NewRequest("PUT", "/kv/around", strings.NewReader("x")))
	if rec.Code/100 != 2 {
		t.Fatalf("direct PUT: %d", rec.Code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := ProposeAudit(ctx, c.replicas[1].group, 10*time.Second, []uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "member 3's repair request", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(repaired) > 0
	})
	time.Sleep(200 * time.Millisecond) // a wrong repair request would come now
	mu.Lock()
	got := fmt.Sprint(repaired)
	mu.Unlock()
	if got != "[3]" {
		t.Fatalf("repair requested by %v, want [3]", got)
	}
	waitFor(t, "members 1 and 2 to agree", func() bool {
		return gathered(t, c.reg, "smr_audits_total", map[string]string{"result": AuditAgree}) == 2
	})
}
