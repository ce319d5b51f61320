package raftcore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

// proposeRetry retries p (same Session/Seq, so at most one application)
// while the outcome is unknown or there is no leader.
func proposeRetry(ctx context.Context, g *raftcore.Group, p raftcore.Proposal) (raftcore.Result, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		res, err := g.Propose(actx, p)
		cancel()
		retry := errors.Is(err, raftcore.ErrNoLeader) || errors.Is(err, raftcore.ErrLeaderLost) || errors.Is(err, raftcore.ErrTimeout)
		if !retry || ctx.Err() != nil {
			return res, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// put writes key=val, retrying through elections (a loaded test machine
// can delay heartbeats enough to trigger one). Re-applying the same put is
// harmless for these tests.
func put(ctx context.Context, g *raftcore.Group, key, val string) (raftcore.Result, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		res, err := g.Propose(actx, raftcore.Proposal{Data: kvtest.Op{Kind: "put", Key: key, Value: val}.Encode()})
		cancel()
		retry := errors.Is(err, raftcore.ErrNoLeader) || errors.Is(err, raftcore.ErrLeaderLost) || errors.Is(err, raftcore.ErrTimeout)
		if !retry || ctx.Err() != nil {
			return res, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stopping every member and starting them again replays the WAL (and
// snapshots) into fresh state machines: the applied sequence is identical.
func TestRestartFromDiskReplaysSameSequence(t *testing.T) {
	for _, snapEvery := range []uint64{0, 20} {
		t.Run(fmt.Sprintf("snapshot-every-%d", snapEvery), func(t *testing.T) {
			c := kvtest.NewCluster(t, kvtest.Options{Members: 3, SnapshotEvery: snapEvery})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			lead := mustLeader(t, ctx, c)
			for i := 0; i < 100; i++ {
				if _, err := put(ctx, c.Member(lead).Group, fmt.Sprintf("k%d", i%7), fmt.Sprint(i)); err != nil {
					t.Fatalf("put %d: %v", i, err)
				}
			}
			last, err := c.WaitConverged(ctx)
			if err != nil {
				t.Fatal(err)
			}
			before, _ := c.Member(1).KV.ChainAt(last)
			restartAll(t, c)
			for id := uint64(1); id <= 3; id++ {
				if err := c.Member(id).Group.WaitApplied(ctx, last); err != nil {
					t.Fatal(err)
				}
				// The replay (snapshot + WAL) reproduces the same sequence.
				if chain, ok := c.Member(id).KV.ChainAt(last); !ok || chain != before {
					t.Fatalf("member %d replayed a different sequence up to %d (known=%v)", id, last, ok)
				}
				if got := c.Member(id).KV.Get("k1"); got != "99" {
					t.Fatalf("member %d after restart: k1=%q, want 99", id, got)
				}
			}
			mustLeader(t, ctx, c)
			if _, err := c.WaitConverged(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A member that was down while the log was compacted catches up from the
// leader's snapshot; a member whose disk was wiped rejoins with Join=true.
func TestCatchUpBySnapshotAndWipedDisk(t *testing.T) {
	c, ctx, lead := startCluster(t, kvtest.Options{Members: 3, SnapshotEvery: 10})
	lag := without(c.Live(), lead)[0]
	c.Stop(lag)
	// Enough writes that the log is compacted past what lag has (snapshot
	// every 10, compaction keeps 1024 entries: write beyond that).
	for i := 0; i < 1200; i++ {
		if _, err := put(ctx, c.Member(lead).Group, "k", fmt.Sprint(i)); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	if err := c.Start(lag, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.Member(lag).KV.Get("k"); got != "1199" {
		t.Fatalf("lagging member: k=%q", got)
	}
	// Wipe a follower's disk: the group re-admits the same id with an empty
	// log (ReplaceMember) and it rejoins as a fresh member.
	lead = mustLeader(t, ctx, c)
	wiped := without(c.Live(), lead)[0]
	c.Stop(wiped)
	if err := removeDataDir(c, wiped); err != nil {
		t.Fatal(err)
	}
	if err := c.Member(lead).Group.ReplaceMember(ctx, wiped, kvtest.Addr(wiped)); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(wiped, true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.Member(wiped).KV.Get("k"); got != "1199" {
		t.Fatalf("wiped member: k=%q", got)
	}
}

// Membership: add a 4th member through ConfChange, remove an old one, and
// the group keeps ordering with the new membership.
func TestAddRemoveMember(t *testing.T) {
	c, ctx, lead := startCluster(t, kvtest.Options{Members: 3})
	g := c.Member(lead).Group
	if _, err := put(ctx, g, "a", "1"); err != nil {
		t.Fatal(err)
	}
	if err := g.AddMember(ctx, 4, kvtest.Addr(4)); err != nil {
		t.Fatalf("add member 4: %v", err)
	}
	if err := c.Start(4, true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.Member(4).KV.Get("a"); got != "1" {
		t.Fatalf("new member: a=%q", got)
	}
	if n := len(c.Member(4).Group.Status().Members); n != 4 {
		t.Fatalf("new member sees %d members, want 4", n)
	}
	// Remove a follower other than the leader and the new member.
	victim := without(without(c.Live(), lead), 4)[0]
	if err := g.RemoveMember(ctx, victim); err != nil {
		t.Fatalf("remove member %d: %v", victim, err)
	}
	// The removed member learns it no longer has a seat; its owner stops it.
	waitState(t, ctx, c.Member(victim).Group, func(st raftcore.Status) bool { _, ok := st.Members[victim]; return !ok })
	c.Stop(victim)
	// Still a quorum of 2 out of 3 (leader, 4, remaining): isolate none and
	// keep writing through member 4.
	if _, err := put(ctx, c.Member(4).Group, "a", "2"); err != nil {
		t.Fatalf("write after removal: %v", err)
	}
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(g.Status().Members); n != 3 {
		t.Fatalf("leader sees %d members after removal, want 3: %v", n, g.Status().Members)
	}
}

// A retried (session, seq) is applied once and returns the first result,
// on any member.
func TestDedupRetriedProposal(t *testing.T) {
	c, ctx, _ := startCluster(t, kvtest.Options{Members: 3})
	app := raftcore.Proposal{Session: 42, Seq: 1, Data: kvtest.Op{Kind: "append", Key: "x", Value: "a"}.Encode()}
	var first raftcore.Result
	for i, id := range c.Live() {
		res, err := proposeRetry(ctx, c.Member(id).Group, app)
		if err != nil {
			t.Fatalf("attempt %d on %d: %v", i, id, err)
		}
		if i == 0 {
			first = res
		} else if res.Index != first.Index || string(res.Value) != string(first.Value) {
			t.Fatalf("retry on %d returned %+v, want first result %+v", id, res, first)
		}
	}
	if string(first.Value) != "a" {
		t.Fatalf("append result %q", first.Value)
	}
	_, err := proposeRetry(ctx, c.Member(1).Group, raftcore.Proposal{Session: 42, Seq: 2, Data: kvtest.Op{Kind: "append", Key: "x", Value: "b"}.Encode()})
	if err != nil {
		t.Fatal(err)
	}
	// An older seq is refused with a typed error.
	_, err = proposeRetry(ctx, c.Member(2).Group, app)
	if !errors.Is(err, raftcore.ErrStaleSeq) {
		t.Fatalf("stale seq: got %v, want ErrStaleSeq", err)
	}
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range c.Live() {
		if got := c.Member(id).KV.Get("x"); got != "ab" {
			t.Fatalf("member %d: x=%q, want ab (applied once each)", id, got)
		}
	}
}

func TestApplyErrorReturnedToProposer(t *testing.T) {
	c := kvtest.NewCluster(t, kvtest.Options{Members: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mustLeader(t, ctx, c)
	_, err := c.Member(1).Group.Propose(ctx, raftcore.Proposal{Data: []byte("not json")})
	var ae *raftcore.ApplyError
	if !errors.As(err, &ae) {
		t.Fatalf("got %v, want *ApplyError", err)
	}
}

func TestBadInput(t *testing.T) {
	net := memnet.New()
	defer net.Close()
	okPeers := map[uint64]string{1: "a"}
	nodeTests := []struct {
		name string
		cfg  raftcore.NodeConfig
	}{
		{"no data dir", raftcore.NodeConfig{Transport: net.Endpoint("x")}},
		{"no transport", raftcore.NodeConfig{DataDir: t.TempDir()}},
		{"election <= heartbeat", raftcore.NodeConfig{DataDir: t.TempDir(), Transport: net.Endpoint("x"), ElectionTicks: 2, HeartbeatTicks: 2}},
		{"negative tick", raftcore.NodeConfig{DataDir: t.TempDir(), Transport: net.Endpoint("x"), TickInterval: -1}},
	}
	for _, tc := range nodeTests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := raftcore.NewNode(tc.cfg); !errors.Is(err, raftcore.ErrInvalidConfig) {
				t.Fatalf("got %v, want ErrInvalidConfig", err)
			}
		})
	}
	n, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: t.TempDir(), Transport: net.Endpoint("a"), TickInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	groupTests := []struct {
		name string
		cfg  raftcore.GroupConfig
		want error
	}{
		{"empty name", raftcore.GroupConfig{SelfID: 1, Peers: okPeers}, raftcore.ErrInvalidConfig},
		{"name with slash", raftcore.GroupConfig{Name: "a/b", SelfID: 1, Peers: okPeers}, raftcore.ErrInvalidConfig},
		{"zero self id", raftcore.GroupConfig{Name: "g", Peers: okPeers}, raftcore.ErrInvalidConfig},
		{"self not in peers", raftcore.GroupConfig{Name: "g", SelfID: 2, Peers: okPeers}, raftcore.ErrInvalidConfig},
		{"empty address", raftcore.GroupConfig{Name: "g", SelfID: 1, Peers: map[uint64]string{1: ""}}, raftcore.ErrInvalidConfig},
		{"member id 0", raftcore.GroupConfig{Name: "g", SelfID: 1, Peers: map[uint64]string{1: "a", 0: "b"}}, raftcore.ErrInvalidConfig},
	}
	for _, tc := range groupTests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := n.StartGroup(tc.cfg, kvtest.NewKV()); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	g, err := n.StartGroup(raftcore.GroupConfig{Name: "g", SelfID: 1, Peers: okPeers}, kvtest.NewKV())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.StartGroup(raftcore.GroupConfig{Name: "g", SelfID: 1, Peers: okPeers}, kvtest.NewKV()); !errors.Is(err, raftcore.ErrGroupExists) {
		t.Fatalf("duplicate group: got %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := raftcore.Proposal{Data: []byte(strings.Repeat("x", 5<<20))}
	if _, err := g.Propose(ctx, big); !errors.Is(err, raftcore.ErrTooLarge) {
		t.Fatalf("oversized proposal: got %v, want ErrTooLarge", err)
	}
	if err := g.AddMember(ctx, 0, "x"); !errors.Is(err, raftcore.ErrInvalidConfig) {
		t.Fatalf("add member 0: got %v", err)
	}
	// A context that is already over returns ErrTimeout, never hangs.
	dctx, dcancel := context.WithCancel(ctx)
	dcancel()
	if _, err := g.Propose(dctx, raftcore.Proposal{Data: kvtest.Op{Kind: "get", Key: "a"}.Encode()}); err != nil && !errors.Is(err, raftcore.ErrTimeout) {
		t.Fatalf("cancelled ctx: got %v, want ErrTimeout or success", err)
	}
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Propose(ctx, raftcore.Proposal{Data: []byte("{}")}); !errors.Is(err, raftcore.ErrStopped) {
		t.Fatalf("after stop: got %v, want ErrStopped", err)
	}
}

// Many groups share one node and one transport; each has its own log.
func TestManyGroupsOneNode(t *testing.T) {
	net := memnet.New()
	defer net.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	peers := map[uint64]string{1: "n1", 2: "n2", 3: "n3"}
	var nodes []*raftcore.Node
	groups := map[string][]*raftcore.Group{}
	for id := uint64(1); id <= 3; id++ {
		n, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: t.TempDir(), Transport: net.Endpoint(peers[id]), TickInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		nodes = append(nodes, n)
		for _, name := range []string{"svc-a", "svc-b", "svc-c"} {
			g, err := n.StartGroup(raftcore.GroupConfig{Name: name, SelfID: id, Peers: peers}, kvtest.NewKV())
			if err != nil {
				t.Fatal(err)
			}
			groups[name] = append(groups[name], g)
		}
	}
	for name, gs := range groups {
		for i := 0; i < 20; i++ {
			if _, err := put(ctx, gs[i%3], "k", name+fmt.Sprint(i)); err != nil {
				t.Fatalf("%s put %d: %v", name, i, err)
			}
		}
		for _, g := range gs {
			if _, err := g.ReadIndex(ctx); err != nil {
				t.Fatalf("%s read index: %v", name, err)
			}
		}
	}
}

// A member that comes back on a new address (rescheduled pod, new IP) keeps
// its id and log; the others learn the address with SetPeerAddr, no
// membership change.
func TestPeerAddressChange(t *testing.T) {
	net := memnet.New()
	defer net.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	peers := map[uint64]string{1: "a1", 2: "a2", 3: "a3"}
	dirs := map[uint64]string{1: t.TempDir(), 2: t.TempDir(), 3: t.TempDir()}
	nodes := map[uint64]*raftcore.Node{}
	groups := map[uint64]*raftcore.Group{}
	kvs := map[uint64]*kvtest.KV{}
	start := func(id uint64, addr string, peers map[uint64]string) {
		t.Helper()
		n, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: dirs[id], Transport: net.Endpoint(addr), TickInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		kvs[id] = kvtest.NewKV()
		g, err := n.StartGroup(raftcore.GroupConfig{Name: "kv", SelfID: id, Peers: peers}, kvs[id])
		if err != nil {
			t.Fatal(err)
		}
		nodes[id], groups[id] = n, g
	}
	for id := uint64(1); id <= 3; id++ {
		start(id, peers[id], peers)
	}
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	// Retry through transient leaderless moments (elections).
	write := func(via uint64, v string) {
		t.Helper()
		for {
			_, err := put(ctx, groups[via], "k", v)
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("put %s via %d: %v", v, via, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	write(1, "1")
	nodes[3].Close()
	moved := map[uint64]string{1: "a1", 2: "a2", 3: "a3-new"}
	start(3, moved[3], moved)
	groups[1].SetPeerAddr(3, moved[3])
	groups[2].SetPeerAddr(3, moved[3])
	// Stop member 1: progress now needs member 3 at its new address.
	nodes[1].Close()
	delete(nodes, 1)
	write(2, "2")
	if _, err := groups[3].ReadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if got := kvs[3].Get("k"); got != "2" {
		t.Fatalf("moved member: k=%q, want 2", got)
	}
	if addr := groups[2].Status().Members[3]; addr != moved[3] {
		t.Fatalf("member 2 routes 3 to %q", addr)
	}
}

// The leader hands leadership over before it is stopped; the group keeps
// ordering with the new leader. Afterwards the old leader's data is deleted.
func TestTransferLeadershipAndDeleteGroup(t *testing.T) {
	c, ctx, lead := startCluster(t, kvtest.Options{Members: 3})
	follower := without(c.Live(), lead)[0]
	if err := c.Member(follower).Group.TransferLeadership(ctx, 0); !errors.Is(err, raftcore.ErrInvalidConfig) {
		t.Fatalf("transfer from a follower: got %v, want ErrInvalidConfig", err)
	}
	if err := c.Member(lead).Group.TransferLeadership(ctx, 99); !errors.Is(err, raftcore.ErrInvalidConfig) {
		t.Fatalf("transfer to a non-member: got %v, want ErrInvalidConfig", err)
	}
	if _, err := put(ctx, c.Member(lead).Group, "a", "1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Member(lead).Group.TransferLeadership(ctx, 0); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	newLead := mustLeader(t, ctx, c)
	if newLead == lead {
		t.Fatalf("leadership stayed on %d", lead)
	}
	if _, err := put(ctx, c.Member(newLead).Group, "a", "2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Member(lead).Node.DeleteGroup(kvtest.GroupName); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.Dir, kvtest.Addr(lead), kvtest.GroupName)); !os.IsNotExist(err) {
		t.Fatalf("group data still there: %v", err)
	}
	if err := c.Member(lead).Node.DeleteGroup("bad/name"); !errors.Is(err, raftcore.ErrInvalidConfig) {
		t.Fatalf("delete bad name: got %v", err)
	}
}
