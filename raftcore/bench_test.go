package raftcore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// BenchmarkPropose64 measures committed proposals/s of a 3-member group
// (memnet, real WAL fsync) with 64 concurrent proposers, against a
// baseline measured in the same run: one WAL append+fsync per request, done
// sequentially (what a log without batching could reach at best).
func BenchmarkPropose64(b *testing.B) {
	base := sequentialFsyncRate(b, 200)
	c := kvtest.NewCluster(b, kvtest.Options{Members: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lead, err := c.WaitLeader(ctx)
	if err != nil {
		b.Fatal(err)
	}
	members := []*kvtest.Member{c.Member(lead)}
	for _, id := range c.Live() {
		if id != lead {
			members = append(members, c.Member(id))
		}
	}
	payload := string(make([]byte, 128))
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for p := 0; p < 64; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := members[p%len(members)]
			for seq := uint64(1); next.Add(1) <= int64(b.N); seq++ {
				op := kvtest.Op{Kind: "put", Key: fmt.Sprint("k", p), Value: payload}
				if _, err := m.Group.Propose(ctx, raftcore.Proposal{Session: uint64(p + 1), Seq: seq, Data: op.Encode()}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	rate := float64(b.N) / time.Since(start).Seconds()
	b.ReportMetric(rate, "proposals/s")
	b.ReportMetric(base, "seq-fsyncs/s")
	b.ReportMetric(rate/base, "x-vs-seq-fsync")
}

func sequentialFsyncRate(b *testing.B, n int) float64 {
	w, err := wal.Create(zap.NewNop(), filepath.Join(b.TempDir(), "wal"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	data := make([]byte, 160)
	start := time.Now()
	for i := 1; i <= n; i++ {
		e := &raftpb.Entry{Index: new(uint64(i)), Term: new(uint64(1)), Data: data}
		if err := w.Save(&raftpb.HardState{Term: new(uint64(1)), Commit: new(uint64(i))}, []*raftpb.Entry{e}); err != nil {
			b.Fatal(err)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}
