package raftcore_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := raftcore.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raftcore.NewMetrics(reg); err == nil {
		t.Fatal("registering the metrics twice succeeded")
	}
	net := memnet.New()
	defer net.Close()
	n, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: t.TempDir(), Transport: net.Endpoint("a"), TickInterval: 10 * time.Millisecond, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g, err := n.StartGroup(raftcore.GroupConfig{Name: "g", SelfID: 1, Peers: map[uint64]string{1: "a"}}, kvtest.NewKV())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := put(ctx, g, "k", "v"); err != nil {
		t.Fatal(err)
	}
	const reads = 20
	errc := make(chan error, reads)
	for range reads {
		go func() { _, err := g.ReadIndex(ctx); errc <- err }()
	}
	for range reads {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	// An open session shows in the de-duplication gauge.
	if _, err := g.Propose(ctx, raftcore.Proposal{Session: 9, Seq: 1, Data: kvtest.Op{Kind: "put", Key: "s", Value: "1"}.Encode()}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]uint64{}
	var readSum, sessions float64
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			if h := mm.GetHistogram(); h != nil {
				seen[mf.GetName()] += h.GetSampleCount()
				if mf.GetName() == "smr_raft_read_batch_requests" {
					readSum += h.GetSampleSum()
				}
			}
			if mf.GetName() == "smr_raft_dedup_sessions" {
				sessions = mm.GetGauge().GetValue()
			}
		}
	}
	for _, name := range []string{"smr_raft_wal_save_seconds", "smr_raft_batch_requests", "smr_raft_read_batch_requests"} {
		if seen[name] == 0 {
			t.Errorf("%s has no samples (seen %v)", name, seen)
		}
	}
	// Every read rode in exactly one ReadIndex batch.
	if readSum != reads {
		t.Errorf("read batches carried %v reads, want %d", readSum, reads)
	}
	if sessions != 1 {
		t.Errorf("smr_raft_dedup_sessions = %v, want 1", sessions)
	}
}
