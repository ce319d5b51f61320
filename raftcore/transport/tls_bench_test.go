package transport

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// benchGroup is a 3-member group in this process over loopback gRPC, with
// real WALs, plaintext or mutual TLS.
type benchGroup struct {
	groups []*raftcore.Group // leader first
}

func startBenchGroup(b *testing.B, secure bool) *benchGroup {
	b.Helper()
	var ca *pki.CA
	if secure {
		var err error
		if ca, err = pki.NewCA("bench CA", time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	trs := map[uint64]*GRPC{}
	peers := map[uint64]string{}
	for id := uint64(1); id <= 3; id++ {
		cfg := Config{Listen: "127.0.0.1:0"}
		if secure {
			m, err := pki.NewMember(ca, []pki.Identity{{Group: "kv", Member: id}}, 0, nil)
			if err != nil {
				b.Fatal(err)
			}
			cfg.TLS, cfg.AuthorizePeer = m.TLS, m.Authorize
		}
		tr, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		trs[id], peers[id] = tr, tr.Addr()
	}
	bg := &benchGroup{}
	for id := uint64(1); id <= 3; id++ {
		n, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: b.TempDir(), Transport: trs[id]})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { n.Close() })
		g, err := n.StartGroup(raftcore.GroupConfig{Name: "kv", SelfID: id, Peers: peers}, kvtest.NewKV())
		if err != nil {
			b.Fatal(err)
		}
		bg.groups = append(bg.groups, g)
	}
	// Wait for a leader (bounded only to fail), put it first.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("no leader")
		}
		if lead := bg.groups[0].Status().Leader; lead != 0 {
			bg.groups[0], bg.groups[lead-1] = bg.groups[lead-1], bg.groups[0]
			return bg
		}
	}
}

// run commits n proposals from 64 concurrent proposers spread over the
// members, and returns commits per second.
func (bg *benchGroup) run(b *testing.B, n int, session *atomic.Uint64) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	payload := string(make([]byte, 128))
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for p := 0; p < 64; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := bg.groups[p%len(bg.groups)]
			s := session.Add(1)
			for seq := uint64(1); next.Add(1) <= int64(n); seq++ {
				op := kvtest.Op{Kind: "put", Key: fmt.Sprint("k", p), Value: payload}
				if _, err := g.Propose(ctx, raftcore.Proposal{Session: s, Seq: seq, Data: op.Encode()}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkPropose64TLS: commits/s of a 3-member group over loopback gRPC
// with 64 concurrent proposers, mutual TLS vs plaintext in the same run.
// The two groups take turns (10 rounds each of b.N/20 proposals), so load from
// elsewhere on the machine hits both alike; tls-cost-% is the relative
// throughput lost to TLS (target: at most 10).
func BenchmarkPropose64TLS(b *testing.B) {
	plain, secure := startBenchGroup(b, false), startBenchGroup(b, true)
	var session atomic.Uint64
	// Warm up connections and WALs outside the measurement.
	plain.run(b, 256, &session)
	secure.run(b, 256, &session)
	b.ResetTimer()
	const rounds = 10
	per := max(b.N/(2*rounds), 64)
	var tp, ts time.Duration // time spent per system
	var np, ns int
	for round := 0; round < rounds; round++ {
		t0 := time.Now()
		plain.run(b, per, &session)
		tp += time.Since(t0)
		t1 := time.Now()
		secure.run(b, per, &session)
		ts += time.Since(t1)
		np += per
		ns += per
	}
	rp, rs := float64(np)/tp.Seconds(), float64(ns)/ts.Seconds()
	b.ReportMetric(rp, "plaintext-commits/s")
	b.ReportMetric(rs, "mtls-commits/s")
	b.ReportMetric(100*(rp-rs)/rp, "tls-cost-%")
}
