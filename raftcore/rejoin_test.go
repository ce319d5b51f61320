package raftcore_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// A member that lost its disk and comes back under its old id (Join=true,
// empty log) must not vote before it caught up: an entry committed by the
// old leader and that member alone would otherwise be lost when the member
// that lacks it campaigns. Here: e is committed by {a, b} while c is cut
// off; b loses its disk, a stops. c campaigns and the wiped b must not elect
// it. Once a is back, b catches up from a and e is on every member.
func TestRejoinedMemberDoesNotVoteBeforeCatchingUp(t *testing.T) {
	c, ctx, _ := startCluster(t, kvtest.Options{Members: 3})
	cut := uint64(3)
	c.Net.Isolate(kvtest.Addr(cut), addrs([]uint64{1, 2})...)
	a := mustLeader(t, ctx, c, 1, 2)
	b := without([]uint64{1, 2}, a)[0]
	if _, err := put(ctx, c.Member(a).Group, "e", "committed-by-a-and-b"); err != nil {
		t.Fatal(err)
	}
	waitState(t, ctx, c.Member(b).Group, func(st raftcore.Status) bool { return st.Applied >= c.Member(a).Group.Status().Applied })
	// c may still believe it leads the term it led before it was cut off
	// (under load its check-quorum step-down can lag): only a leader of a
	// later term than a's was elected with the wiped member's vote.
	aTerm := c.Member(a).Group.Status().Term
	c.Stop(b)
	if err := removeDataDir(c, b); err != nil {
		t.Fatal(err)
	}
	c.Stop(a)
	c.Net.Heal()
	if err := c.StartWith(b, kvtest.StartOptions{Join: true, CatchUpBeforeVoting: true}); err != nil {
		t.Fatal(err)
	}
	if st := c.Member(b).Group.Status(); !st.CatchingUp {
		t.Fatalf("wiped member started with Join: CatchingUp=false: %+v", st)
	}
	// Ten election timeouts (10 ticks of 20ms each): c campaigns all along.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for _, id := range []uint64{b, cut} {
			if st := c.Member(id).Group.Status(); st.State == "StateLeader" && st.Term > aTerm {
				t.Fatalf("member %d became leader while the only member with entry e was down: the wiped member voted", id)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Start(a, false); err != nil {
		t.Fatal(err)
	}
	waitState(t, ctx, c.Member(b).Group, func(st raftcore.Status) bool { return !st.CatchingUp })
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range c.Live() {
		if got := c.Member(id).KV.Get("e"); got != "committed-by-a-and-b" {
			t.Fatalf("member %d: e=%q: a committed entry was lost", id, got)
		}
	}
}

// A new member added as a learner catches up without counting toward the
// quorum, is promoted, and votes from then on.
func TestAddLearnerThenPromote(t *testing.T) {
	c, ctx, lead := startCluster(t, kvtest.Options{Members: 3, SnapshotEvery: 20})
	g := c.Member(lead).Group
	for i := 0; i < 100; i++ {
		if _, err := put(ctx, g, "k", "v"); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.AddLearner(ctx, 4, kvtest.Addr(4)); err != nil {
		t.Fatal(err)
	}
	if st := g.Status(); !slices.Contains(st.Learners, 4) || len(st.Members) != 4 {
		t.Fatalf("after AddLearner: members %v learners %v", st.Members, st.Learners)
	}
	if err := c.Start(4, true); err != nil {
		t.Fatal(err)
	}
	waitProgress(t, ctx, g, func(commit uint64, prs map[uint64]raftcore.MemberProgress) bool {
		return prs[4].Learner && prs[4].Match >= commit
	})
	if err := g.PromoteMember(ctx, 4); err != nil {
		t.Fatal(err)
	}
	if st := g.Status(); slices.Contains(st.Learners, 4) {
		t.Fatalf("after PromoteMember: learners %v", st.Learners)
	}
	waitState(t, ctx, c.Member(4).Group, func(st raftcore.Status) bool { return !st.CatchingUp && len(st.Learners) == 0 })
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.Member(4).KV.Get("k"); got != "v" {
		t.Fatalf("promoted member: k=%q", got)
	}
	// Not the leader: Progress says so with a typed error.
	if _, _, err := c.Member(4).Group.Progress(ctx); err == nil && c.Member(4).Group.Status().State != "StateLeader" {
		t.Fatal("Progress on a follower succeeded")
	}
}

func waitProgress(t *testing.T, ctx context.Context, g *raftcore.Group, ok func(uint64, map[uint64]raftcore.MemberProgress) bool) {
	t.Helper()
	for {
		commit, prs, err := g.Progress(ctx)
		if err == nil && ok(commit, prs) {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("progress condition not reached: commit %d %+v err %v", commit, prs, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A joiner that has no membership yet (not contacted by the leader) accepts
// authenticated peers of its group: refusing them would refuse the leader's
// first append. Once it has a membership, non-members are refused again.
func TestMemberCheckOfAJoiner(t *testing.T) {
	c, ctx, lead := startCluster(t, kvtest.Options{Members: 3})
	if err := c.StartWith(4, kvtest.StartOptions{Join: true, CatchUpBeforeVoting: true}); err != nil {
		t.Fatal(err)
	}
	var grp atomic.Pointer[raftcore.Group]
	grp.Store(c.Member(4).Group)
	isMember := raftcore.MemberCheck(&grp, kvtest.GroupName, 0)
	if !isMember(kvtest.GroupName, lead) {
		t.Fatal("a joiner without membership refused the leader")
	}
	if err := c.Member(lead).Group.AddLearner(ctx, 4, kvtest.Addr(4)); err != nil {
		t.Fatal(err)
	}
	waitState(t, ctx, c.Member(4).Group, func(st raftcore.Status) bool { return len(st.Members) == 4 })
	if !isMember(kvtest.GroupName, lead) || isMember(kvtest.GroupName, 9) {
		t.Fatal("after joining: the leader must be accepted and a non-member refused")
	}
}
