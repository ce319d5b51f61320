package membership_test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/membership"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// Real raftcore groups (in-process, over memnet) under client load: every
// member runs a Reconciler; the size goes 3 -> 5 -> 3 -> 1 -> 0 -> 3 (at 0
// member 1 stays, holding the state). New
// members start in join mode (catching up before they vote) as soon as the
// size grows, as a StatefulSet's new pods would; removed members are
// stopped once the group no longer lists them. The history must stay
// linearizable and every member end with the same applied sequence.
func TestReconcilerScalesUnderLoad(t *testing.T) {
	c := kvtest.NewCluster(t, kvtest.Options{Members: 3, SnapshotEvery: 50})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	var size atomic.Uint64
	size.Store(3)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	reconcilers := map[uint64]*membership.Reconciler{}
	run := func(id uint64) {
		rctx, stop := context.WithCancel(ctx)
		t.Cleanup(stop)
		r := &membership.Reconciler{Group: c.Member(id).Group, Size: func() (uint64, bool) { return size.Load(), true },
			Addr: kvtest.Addr, Log: log, Interval: 50 * time.Millisecond}
		reconcilers[id] = r
		go r.Run(rctx)
	}
	for _, id := range c.Live() {
		run(id)
	}
	cctx, stopClients := context.WithCancel(ctx)
	done := make(chan *kvtest.History)
	go func() {
		done <- kvtest.RunClients(cctx, kvtest.ClientConfig{Clients: 4, Keys: 4, Targets: c.Targets(), Seed: 3})
	}()

	scale := func(n uint64) {
		t.Helper()
		size.Store(n)
		for id := uint64(1); id <= n; id++ {
			if c.Member(id) == nil {
				if err := c.StartWith(id, kvtest.StartOptions{Join: true, CatchUpBeforeVoting: true}); err != nil {
					t.Fatal(err)
				}
				run(id)
			}
		}
		want := make([]uint64, 0, n)
		for id := uint64(1); id <= max(n, 1); id++ {
			want = append(want, id)
		}
		// Until every live member lists exactly 1..n as voters; members
		// above n are stopped once the leader no longer lists them.
		for {
			lead, err := c.WaitLeader(ctx, want...)
			if err != nil {
				t.Fatalf("scale to %d: %v", n, err)
			}
			st := c.Member(lead).Group.Status()
			voters := slices.Sorted(maps.Keys(st.Members))
			if slices.Equal(voters, want) && len(st.Learners) == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, id := range c.Live() {
			if id > max(n, 1) {
				c.Stop(id)
			}
		}
		t.Logf("size %d reached", n)
	}
	for _, n := range []uint64{5, 3, 1, 0, 3} {
		scale(n)
		time.Sleep(300 * time.Millisecond) // load on the new membership
	}
	stopClients()
	h := <-done
	t.Logf("history: ok=%d unknown=%d failed=%d", h.OK, h.Unknown, h.Failed)
	if h.OK == 0 {
		t.Fatal("no operation succeeded")
	}
	if err := h.Check(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	// A pass on the settled group changes nothing (idempotent).
	for _, id := range c.Live() {
		if changed, err := reconcilers[id].Once(ctx); changed || err != nil {
			t.Fatalf("member %d: a pass on a settled group changed=%v err=%v", id, changed, err)
		}
	}
}

// A follower loses its data directory and comes back under its id (Join,
// catching up before it votes) while the leader stays: raft alone would
// leave it stuck (the leader never resends what it acknowledged), so the
// leader's reconciler sees the lost log, removes the member, adds it back as
// a learner and promotes it once caught up. Clients run throughout.
func TestReconcilerReplacesMemberThatLostItsLog(t *testing.T) {
	c := kvtest.NewCluster(t, kvtest.Options{Members: 3, SnapshotEvery: 50})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lead, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	run := func(id uint64) {
		rctx, stop := context.WithCancel(ctx)
		t.Cleanup(stop)
		r := &membership.Reconciler{Group: c.Member(id).Group, Size: func() (uint64, bool) { return 3, true },
			Addr: kvtest.Addr, Log: log, Interval: 50 * time.Millisecond}
		go r.Run(rctx)
	}
	for _, id := range c.Live() {
		run(id)
	}
	cctx, stopClients := context.WithCancel(ctx)
	done := make(chan *kvtest.History)
	go func() {
		done <- kvtest.RunClients(cctx, kvtest.ClientConfig{Clients: 4, Keys: 4, Targets: c.Targets(), Seed: 5})
	}()
	time.Sleep(500 * time.Millisecond)
	lost := uint64(1)
	if lost == lead {
		lost = 2
	}
	c.Stop(lost)
	if err := os.RemoveAll(filepath.Join(c.Dir, kvtest.Addr(lost))); err != nil {
		t.Fatal(err)
	}
	if err := c.StartWith(lost, kvtest.StartOptions{Join: true, CatchUpBeforeVoting: true}); err != nil {
		t.Fatal(err)
	}
	run(lost)
	for {
		st := c.Member(lost).Group.Status()
		_, member := st.Members[lost]
		if member && !st.CatchingUp && len(st.Members) == 3 && !slices.Contains(st.Learners, lost) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the member that lost its log never came back as a voter: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	stopClients()
	h := <-done
	t.Logf("history: ok=%d unknown=%d failed=%d", h.OK, h.Unknown, h.Failed)
	if err := h.Check(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

var _ membership.Group = (*raftcore.Group)(nil)
