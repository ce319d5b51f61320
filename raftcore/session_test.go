package raftcore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

func appendOp(key, val string) []byte {
	return kvtest.Op{Kind: "append", Key: key, Value: val}.Encode()
}

// convergedStatus waits until every live member applied the last entry and
// returns that index and each member's status there.
func convergedStatus(t *testing.T, ctx context.Context, c *kvtest.Cluster) (uint64, map[uint64]raftcore.Status) {
	t.Helper()
	last, err := c.WaitConverged(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]raftcore.Status{}
	for _, id := range c.Live() {
		g := c.Member(id).Group
		if err := g.WaitApplied(ctx, last); err != nil {
			t.Fatal(err)
		}
		out[id] = g.Status()
	}
	return last, out
}

// waitSessions waits until every live member applied the last entry and
// checks it holds `want` open sessions and no tombstones in its replicated
// de-duplication table.
func waitSessions(t *testing.T, ctx context.Context, c *kvtest.Cluster, want int) {
	t.Helper()
	last, sts := convergedStatus(t, ctx, c)
	for id, st := range sts {
		if st.Sessions != want || st.EndedSessions != 0 {
			t.Fatalf("member %d holds %d open and %d ended sessions at index %d, want %d and 0", id, st.Sessions, st.EndedSessions, last, want)
		}
	}
}

// Ending sessions keeps the de-duplication table bounded: sessions opened
// and ended leave nothing behind on any member once their tombstones
// expired (a tombstone still refuses a late copy of an ended session's
// proposal), a session still open keeps de-duplicating retries, and a
// restart from a snapshot restores the same table.
func TestSessionEndDropsDedupState(t *testing.T) {
	const grace = 4
	c, ctx, _ := startCluster(t, kvtest.Options{Members: 3, SnapshotEvery: 10, SessionEndGrace: grace})
	propose := func(id uint64, p raftcore.Proposal) raftcore.Result {
		t.Helper()
		res, err := proposeRetry(ctx, c.Member(id).Group, p)
		if err != nil {
			t.Fatalf("member %d: propose %+v: %v", id, p, err)
		}
		return res
	}
	// fill proposes sessionless entries, past the tombstones' grace.
	fill := func(n int) {
		for i := range n {
			propose(1, raftcore.Proposal{Data: kvtest.Op{Kind: "put", Key: "fill", Value: fmt.Sprint(i)}.Encode()})
		}
	}
	// Many short sessions, each ended by its last proposal, on every member.
	for i := range 60 {
		id, session := uint64(i%3+1), uint64(1000+i)
		propose(id, raftcore.Proposal{Session: session, Seq: 1, Data: appendOp("many", ".")})
		propose(id, raftcore.Proposal{Session: session, Seq: 2, Data: appendOp("many", "."), EndSession: true})
	}
	// Within the grace a late copy of an ended session's proposal is refused.
	late := raftcore.Proposal{Session: 1059, Seq: 1, Data: appendOp("many", ".")}
	if _, err := proposeRetry(ctx, c.Member(2).Group, late); !errors.Is(err, raftcore.ErrStaleSeq) {
		t.Fatalf("late copy of an ended session's proposal: got %v, want ErrStaleSeq", err)
	}
	_, sts := convergedStatus(t, ctx, c) // one entry: still within the grace
	for id, st := range sts {
		if st.Sessions != 0 || st.EndedSessions == 0 {
			t.Fatalf("member %d within the grace: %d open, %d ended sessions; want 0 and some", id, st.Sessions, st.EndedSessions)
		}
	}
	fill(grace + 1)
	waitSessions(t, ctx, c, 0)

	// Sessions proposed by member 2, ended together by one proposal of
	// member 2 (a restarted replica ending its previous run's sessions).
	for s := uint64(500); s < 505; s++ {
		propose(2, raftcore.Proposal{Session: s, Seq: 1, Data: appendOp("m2", ".")})
	}
	open := raftcore.Proposal{Session: 7, Seq: 1, Data: appendOp("x", "a")}
	first := propose(1, open)
	waitSessions(t, ctx, c, 6)
	propose(2, raftcore.Proposal{Data: appendOp("reset", "."), EndOriginSessions: true})
	fill(grace + 1)
	waitSessions(t, ctx, c, 1)

	// The still-open session de-duplicates a retry on any member.
	for _, id := range c.Live() {
		if res := propose(id, open); res.Index != first.Index || string(res.Value) != "a" {
			t.Fatalf("retry on member %d returned %+v, want the first result %+v", id, res, first)
		}
	}
	// Enough entries that the newest snapshot holds session 7's state.
	fill(25)
	waitSessions(t, ctx, c, 1)

	restartAll(t, c)
	mustLeader(t, ctx, c)
	waitSessions(t, ctx, c, 1)
	if res := propose(3, open); res.Index != first.Index {
		t.Fatalf("retry after restart returned %+v, want the first result %+v", res, first)
	}
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range c.Live() {
		kv := c.Member(id).KV
		if got := kv.Get("x"); got != "a" {
			t.Fatalf("member %d: x=%q, want a (applied once)", id, got)
		}
		if got := kv.Get("many"); len(got) != 120 {
			t.Fatalf("member %d: %d appends of the ended sessions, want 120", id, len(got))
		}
	}
}
