package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/appstate"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
	"github.com/smr-io/smr-cri/test/lab/redislab"
	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// auditMember is one node of the test: a daemon (its own Manager, raft
// member over real gRPC on loopback, metrics and events) and its own real
// redis-server as the pod's app.
type auditMember struct {
	d          *Daemon
	reg        *prometheus.Registry
	events     *eventLog
	app        string // the app's own address (bypasses replication)
	clientAddr string // the pod's replicated port (fixed across rebuilds)
	pod        podcontract.Pod
}

// metric sums the samples of family name whose labels include want.
func (m *auditMember) metric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	return testcheck.MetricSum(t, m.reg, name, want)
}

// TestIntegrationAuditRepairsDivergedReplica: three members (each a daemon
// with its own real redis-server, raft between them over loopback gRPC)
// under concurrent SET/GET clients through every member. A key written
// straight into member 3's Redis, around replication, makes it diverge: the
// ordered audit finds it on member 3 only (every member's trace says so),
// member 3 records DivergenceDetected and repairs itself through the
// rebuild path (RepairStarted/RepairFinished with the cause,
// smr_repairs_total), the next audit agrees, every app compared directly
// has the same digest, and the clients' history is linearizable. With app
// snapshots every few entries, member 3 snapshots its diverged app before
// the audit: the repair must install a majority member's snapshot, not its
// own (which would bring the divergence back, repair after repair).
func TestIntegrationAuditRepairsDivergedReplica(t *testing.T) {
	nodelab.RequireIntegration(t)
	for _, tc := range []struct {
		name        string
		annotations map[string]string
	}{
		{"log replay, no app snapshots", nil},
		{"own snapshots taken after the divergence", map[string]string{podcontract.AnnotationSnapshotEvery: "16"}},
	} {
		t.Run(tc.name, func(t *testing.T) { testAuditRepair(t, tc.annotations) })
	}
}

func testAuditRepair(t *testing.T, annotations map[string]string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const n = 3
	raftPorts := make([]int, n)
	var peers []string
	for i := range raftPorts {
		raftPorts[i] = freeport.PortT(t)
		peers = append(peers, fmt.Sprintf("%d=127.0.0.1:%d", i+1, raftPorts[i]))
	}
	members := make([]*auditMember, n)
	for i := range members {
		m := &auditMember{reg: prometheus.NewRegistry(), events: &eventLog{}, app: redislab.Start(t).Addr, clientAddr: freeport.AddrT(t)}
		metrics, err := replication.NewMetrics(m.reg)
		if err != nil {
			t.Fatal(err)
		}
		clientAddr, app := m.clientAddr, m.app
		m.d, err = New(Config{
			DataDir: t.TempDir(), TickInterval: 10 * time.Millisecond, Intercept: &nopInterceptor{},
			OriginalPort: func(net.Conn) (int, error) { return 6379, nil },
			// The pod's listener keeps its address when the member is rebuilt,
			// as it does in a pod's netns.
			ListenApp: func(_, _ string) (net.Listener, error) {
				var err error
				for range 100 {
					var ln net.Listener
					if ln, err = net.Listen("tcp", clientAddr); err == nil {
						return ln, nil
					}
					time.Sleep(20 * time.Millisecond)
				}
				return nil, err
			},
			ListenRaft: func(_, addr string) (net.Listener, error) { return net.Listen("tcp", addr) },
			Dialer:     func(string) replication.AppDialer { return appDialer{app} },
			Metrics:    metrics, Events: m.events,
			Executor: replication.ExecutorConfig{Audit: replication.AuditConfig{
				Interval: time.Second, Every: 40, Window: 5 * time.Second}},
		})
		if err != nil {
			t.Fatal(err)
		}
		m.pod = podcontract.Pod{
			SandboxID: "sb-" + strconv.Itoa(i), UID: "uid-redis-" + strconv.Itoa(i),
			Meta: podcontract.Meta{Name: "redis-" + strconv.Itoa(i), Namespace: "smrtest",
				Labels: map[string]string{podcontract.LabelReplicate: podcontract.ValueReplicate},
				Annotations: map[string]string{podcontract.AnnotationPorts: "6379/resp",
					podcontract.AnnotationRaftPort: strconv.Itoa(raftPorts[i]),
					podcontract.AnnotationPeers:    strings.Join(peers, ",")}},
			NetNSPath: "/var/run/netns/fake", IPs: []string{"127.0.0.1"},
		}
		maps.Copy(m.pod.Meta.Annotations, annotations)
		members[i] = m
		t.Cleanup(func() { _ = m.d.Close(context.Background()) })
	}
	for _, m := range members {
		if err := m.d.AttachPod(ctx, m.pod); err != nil {
			t.Fatal(err)
		}
	}

	// Concurrent clients through every member: SET/GET on a few keys.
	h := &history{base: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const clients, keys = 6, 4
	for cl := range clients {
		c := redis.NewClient(&redis.Options{Addr: members[cl%n].clientAddr, Protocol: 2, DisableIdentity: true,
			MaxRetries: -1, PoolSize: 1, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
		t.Cleanup(func() { c.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(cl), 13))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("k%d", rnd.IntN(keys))
				call := time.Since(h.base).Nanoseconds()
				if rnd.IntN(2) == 0 {
					val := fmt.Sprintf("c%d-%d", cl, i)
					err := c.Set(ctx, key, val, 0).Err()
					ret := time.Since(h.base).Nanoseconds()
					// A SET that failed (its member rebuilding, the
					// connection cut) may still have been ordered, unless
					// it was refused before it was sent.
					if err == nil || !testcheck.NotSent(err) {
						h.Record(cl, kvtest.Op{Kind: "put", Key: key, Value: val}, kvtest.Output{Unknown: err != nil}, call, ret)
					}
					if err != nil {
						// Back off as a client would: a member being
						// rebuilt cuts connections for a few seconds, and
						// every SET of unknown outcome multiplies the
						// checker's work (98 of them timed it out).
						time.Sleep(250 * time.Millisecond)
					}
				} else {
					val, err := c.Get(ctx, key).Result()
					ret := time.Since(h.base).Nanoseconds()
					if errors.Is(err, redis.Nil) {
						val, err = "", nil
					}
					if err == nil { // a failed GET changed nothing
						h.Record(cl, kvtest.Op{Kind: "get", Key: key}, kvtest.Output{Value: val}, call, ret)
					}
				}
				if ctx.Err() != nil {
					return
				}
			}
		}()
	}
	stopClients := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopClients()

	// Every member agreed at least once before the fault.
	waitFor(t, ctx, "an audit every member agrees with", func() (bool, string) {
		var got []string
		ok := true
		for i, m := range members {
			v := m.metric(t, "smr_audits_total", map[string]string{"result": replication.AuditAgree})
			got = append(got, fmt.Sprintf("member %d: %v", i+1, v))
			ok = ok && v > 0
		}
		return ok, strings.Join(got, ", ")
	})

	// The fault: a write straight into member 3's own Redis.
	direct := redis.NewClient(&redis.Options{Addr: members[2].app, Protocol: 2, DisableIdentity: true})
	defer direct.Close()
	if err := direct.Set(ctx, "written-around-replication", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "member 3 to record the divergence and finish its repair", func() (bool, string) {
		fin := members[2].events.with(podevents.ReasonRepairFinished)
		return len(fin) > 0, fmt.Sprint(members[2].events.evs)
	})
	repaired := members[2].metric(t, "smr_audits_total", map[string]string{"result": replication.AuditAgree})
	waitFor(t, ctx, "an audit after the repair that member 3 agrees with, and no member marked diverged", func() (bool, string) {
		now := members[2].metric(t, "smr_audits_total", map[string]string{"result": replication.AuditAgree})
		var marked float64
		for _, m := range members {
			marked += m.metric(t, "smr_replica_diverged", nil)
		}
		return now > repaired && marked == 0, fmt.Sprintf("agree %v -> %v, diverged gauges %v", repaired, now, marked)
	})
	stopClients()

	// Only member 3 diverged, was told so and repaired, for that cause.
	for i, m := range members {
		div := m.metric(t, "smr_audits_total", map[string]string{"result": replication.AuditDiverged})
		repairs := m.metric(t, "smr_repairs_total", map[string]string{"cause": replication.CauseDivergence, "result": "ok"})
		detected := m.events.with(podevents.ReasonDivergenceDetected)
		if i == 2 {
			if div != 1 || repairs != 1 || len(detected) != 1 {
				t.Errorf("member 3: %v diverged audits, %v divergence repairs, events %q; want 1, 1, one DivergenceDetected", div, repairs, detected)
			}
			for _, reason := range []string{podevents.ReasonRepairStarted, podevents.ReasonRepairFinished} {
				evs := m.events.with(reason)
				if len(evs) != 1 || !strings.Contains(evs[0], "smrtest/redis-2") || !strings.Contains(evs[0], "cause "+replication.CauseDivergence) ||
					strings.Contains(evs[0], "failed") {
					t.Errorf("member 3 %s events: %q", reason, evs)
				}
			}
			continue
		}
		if div != 0 || repairs != 0 || len(detected) != 0 || len(m.events.with(podevents.ReasonRepairStarted)) != 0 {
			t.Errorf("member %d: %v diverged audits, %v repairs, events %q: only member 3 diverged", i+1, div, repairs, m.events.evs)
		}
	}

	// Every app, compared directly once all applied the same log, is equal.
	var want appstate.Digest
	waitFor(t, ctx, "every app to hold the same state", func() (bool, string) {
		var ds []string
		equal := true
		for i, m := range members {
			a, err := appstate.New(appstate.Config{Dialer: replication.TCPDialer{Host: "127.0.0.1"}, Port: portOf(t, m.app), Protocol: appstate.ProtoRESP})
			if err != nil {
				t.Fatal(err)
			}
			d, err := a.Digest(ctx, appstate.DigestOptions{})
			if err != nil {
				return false, err.Error()
			}
			if i == 0 {
				want = d
			}
			equal = equal && d == want
			ds = append(ds, d.String())
		}
		return equal, strings.Join(ds, " | ")
	})
	if want.Keys == 0 || want.Keys > keys {
		t.Errorf("apps hold %d keys, want 1..%d (the clients' keys only)", want.Keys, keys)
	}
	if n, err := direct.Exists(ctx, "written-around-replication").Result(); err != nil || n != 0 {
		t.Errorf("the key written around replication is still in member 3's app (%d, %v)", n, err)
	}
	t.Logf("history: %d operations, %d SETs of unknown outcome", len(h.ops), h.unknown)
	if res := porcupine.CheckOperationsTimeout(kvtest.Model, h.ops, time.Minute); res != porcupine.Ok {
		t.Fatalf("history of %d SET/GET operations through 3 members (%d SETs of unknown outcome): porcupine says %v", len(h.ops), h.unknown, res)
	}
	t.Logf("member 3 events:\n%s", strings.Join(members[2].events.evs, "\n"))
}

// history is the clients' porcupine history (kvtest's model).
type history struct {
	base    time.Time
	mu      sync.Mutex
	ops     []porcupine.Operation
	unknown int
}

// Record adds one operation; a write of unknown outcome may take effect
// any time after its call.
func (h *history) Record(client int, in kvtest.Op, out kvtest.Output, call, ret int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if out.Unknown {
		h.unknown++
		ret = math.MaxInt64 / 2
	}
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return port
}
