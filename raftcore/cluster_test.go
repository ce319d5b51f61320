package raftcore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// scenario perturbs a running cluster while clients run; the history must
// stay linearizable and members must converge to the same applied sequence.
type scenario struct {
	name    string
	members int
	snap    uint64
	run     func(t *testing.T, ctx context.Context, c *kvtest.Cluster)
}

func TestScenariosLinearizable(t *testing.T) {
	tests := []scenario{
		{name: "steady-3", members: 3, run: func(t *testing.T, ctx context.Context, c *kvtest.Cluster) {
			sleep(ctx, 1500*time.Millisecond)
		}},
		{name: "leader-crash-and-restart", members: 3, run: func(t *testing.T, ctx context.Context, c *kvtest.Cluster) {
			sleep(ctx, 400*time.Millisecond)
			lead := mustLeader(t, ctx, c)
			c.Stop(lead)
			// The remaining majority elects a new leader and keeps serving.
			mustLeader(t, ctx, c)
			sleep(ctx, 400*time.Millisecond)
			if err := c.Start(lead, false); err != nil {
				t.Fatalf("restart %d: %v", lead, err)
			}
			sleep(ctx, 400*time.Millisecond)
		}},
		{name: "leader-in-minority-partition", members: 3, run: func(t *testing.T, ctx context.Context, c *kvtest.Cluster) {
			sleep(ctx, 300*time.Millisecond)
			lead := mustLeader(t, ctx, c)
			others := without(c.Live(), lead)
			c.Net.Isolate(kvtest.Addr(lead), addrs(others)...)
			mustLeader(t, ctx, c, others...)
			sleep(ctx, 500*time.Millisecond)
			c.Net.Heal()
			sleep(ctx, 300*time.Millisecond)
		}},
		{name: "drop-and-delay", members: 3, run: func(t *testing.T, ctx context.Context, c *kvtest.Cluster) {
			c.Net.SetDropAll(0.15)
			c.Net.SetDelayAll(time.Millisecond, 4*time.Millisecond)
			sleep(ctx, 1500*time.Millisecond)
			c.Net.Heal()
		}},
		{name: "full-restart-from-disk", members: 3, snap: 100, run: func(t *testing.T, ctx context.Context, c *kvtest.Cluster) {
			sleep(ctx, 400*time.Millisecond)
			restartAll(t, c)
			mustLeader(t, ctx, c)
			sleep(ctx, 500*time.Millisecond)
		}},
		{name: "add-member-then-remove-leader", members: 3, run: func(t *testing.T, ctx context.Context, c *kvtest.Cluster) {
			sleep(ctx, 300*time.Millisecond)
			lead := mustLeader(t, ctx, c)
			if err := c.Member(lead).Group.AddMember(ctx, 4, kvtest.Addr(4)); err != nil {
				t.Fatalf("add member 4: %v", err)
			}
			if err := c.Start(4, true); err != nil {
				t.Fatal(err)
			}
			sleep(ctx, 400*time.Millisecond)
			lead = mustLeader(t, ctx, c)
			if err := c.Member(4).Group.RemoveMember(ctx, lead); err != nil {
				t.Fatalf("remove leader %d: %v", lead, err)
			}
			c.Stop(lead)
			mustLeader(t, ctx, c)
			sleep(ctx, 400*time.Millisecond)
		}},
		{name: "five-members-2-3-split-with-snapshots", members: 5, snap: 50, run: func(t *testing.T, ctx context.Context, c *kvtest.Cluster) {
			sleep(ctx, 300*time.Millisecond)
			lead := mustLeader(t, ctx, c)
			minority := []uint64{lead, without(c.Live(), lead)[0]}
			majority := without(without(c.Live(), minority[0]), minority[1])
			c.Net.Partition(addrs(minority), addrs(majority))
			mustLeader(t, ctx, c, majority...)
			sleep(ctx, 600*time.Millisecond)
			c.Net.Heal()
			sleep(ctx, 300*time.Millisecond)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := kvtest.NewCluster(t, kvtest.Options{Members: tc.members, SnapshotEvery: tc.snap})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			mustLeader(t, ctx, c)
			cctx, stop := context.WithCancel(ctx)
			done := make(chan *kvtest.History)
			go func() {
				done <- kvtest.RunClients(cctx, kvtest.ClientConfig{Clients: 6, Keys: 4, Targets: c.Targets(), Seed: 7})
			}()
			tc.run(t, ctx, c)
			stop()
			h := <-done
			t.Logf("history: ok=%d unknown=%d failed=%d", h.OK, h.Unknown, h.Failed)
			if h.OK == 0 {
				t.Fatal("no operation succeeded")
			}
			if err := h.Check(20 * time.Second); err != nil {
				t.Fatal(err)
			}
			if _, err := c.WaitConverged(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A member cut off from the majority must fail proposals and reads with a
// typed error before the caller's deadline, while the majority progresses.
func TestMinorityFailsFastMajorityProgresses(t *testing.T) {
	c, ctx, lead := startCluster(t, kvtest.Options{Members: 3})
	follower := without(c.Live(), lead)[0]
	for _, cut := range []uint64{follower, lead} {
		majority := without(c.Live(), cut)
		c.Net.Isolate(kvtest.Addr(cut), addrs(majority)...)
		mustLeader(t, ctx, c, majority...)
		if _, err := put(ctx, c.Member(majority[0]).Group, "a", "1"); err != nil {
			t.Fatalf("majority proposal: %v", err)
		}
		// Give the isolated member time to notice (CheckQuorum / election
		// timeout), then every request must fail with a typed error well
		// before a generous deadline.
		waitState(t, ctx, c.Member(cut).Group, func(st raftcore.Status) bool { return st.State != "StateLeader" })
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		_, perr := c.Member(cut).Group.Propose(pctx, raftcore.Proposal{Data: kvtest.Op{Kind: "put", Key: "a", Value: "2"}.Encode()})
		_, rerr := c.Member(cut).Group.ReadIndex(pctx)
		early := pctx.Err() == nil
		pcancel()
		for _, err := range []error{perr, rerr} {
			if !errors.Is(err, raftcore.ErrNoLeader) && !errors.Is(err, raftcore.ErrLeaderLost) {
				t.Fatalf("isolated member %d: got %v, want ErrNoLeader or ErrLeaderLost", cut, err)
			}
		}
		if !early {
			t.Fatalf("isolated member %d only failed at the deadline", cut)
		}
		c.Net.Heal()
		mustLeader(t, ctx, c)
	}
}

// startCluster starts an in-process cluster, waits for its leader and
// returns a 30s test context (cancelled at cleanup).
func startCluster(t *testing.T, opts kvtest.Options) (*kvtest.Cluster, context.Context, uint64) {
	t.Helper()
	c := kvtest.NewCluster(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c, ctx, mustLeader(t, ctx, c)
}

// restartAll stops every live member, then starts members 1..Members again
// from their disk state.
func restartAll(t *testing.T, c *kvtest.Cluster) {
	t.Helper()
	for _, id := range c.Live() {
		c.Stop(id)
	}
	for id := uint64(1); id <= uint64(c.Opts.Members); id++ {
		if err := c.Start(id, false); err != nil {
			t.Fatalf("restart %d: %v", id, err)
		}
	}
}

func mustLeader(t *testing.T, ctx context.Context, c *kvtest.Cluster, ids ...uint64) uint64 {
	t.Helper()
	lead, err := c.WaitLeader(ctx, ids...)
	if err != nil {
		t.Fatal(err)
	}
	return lead
}

func waitState(t *testing.T, ctx context.Context, g *raftcore.Group, ok func(raftcore.Status) bool) {
	t.Helper()
	for !ok(g.Status()) {
		if ctx.Err() != nil {
			t.Fatalf("group %s member %d: condition not reached: %+v", g.Name(), g.ID(), g.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func without(ids []uint64, drop uint64) []uint64 {
	var out []uint64
	for _, id := range ids {
		if id != drop {
			out = append(out, id)
		}
	}
	return out
}

func addrs(ids []uint64) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = kvtest.Addr(id)
	}
	return out
}

// A follower whose outgoing messages are all lost (while it still
// hears the leader) fails forwarded proposals and reads with ErrLeaderLost
// after a few election timeouts instead of holding them until the deadline.
func TestLostForwardsExpire(t *testing.T) {
	c, ctx, lead := startCluster(t, kvtest.Options{Members: 3})
	f := without(c.Live(), lead)[0]
	// Everything f sends is lost (whoever leads), while it still hears
	// the leader.
	for _, other := range without(c.Live(), f) {
		c.Net.SetLink(kvtest.Addr(f), kvtest.Addr(other), 1.0, 0)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, perr := c.Member(f).Group.Propose(pctx, raftcore.Proposal{Data: kvtest.Op{Kind: "put", Key: "a", Value: "1"}.Encode()})
	_, rerr := c.Member(f).Group.ReadIndex(pctx)
	early := pctx.Err() == nil
	for _, err := range []error{perr, rerr} {
		if !errors.Is(err, raftcore.ErrLeaderLost) {
			t.Fatalf("got %v, want ErrLeaderLost", err)
		}
	}
	if !early {
		t.Fatal("requests were held until the deadline")
	}
}
