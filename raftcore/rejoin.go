package raftcore

import "go.etcd.io/raft/v3/raftpb"

// A member started with GroupConfig.Join and an empty log may be a brand-new
// member (a scaled-up replica) or one that lost its disk: a replica moved to
// a node without its data directory comes back under its old id. The second
// one may have voted in a term it no longer remembers, and may have
// acknowledged entries that were committed with its help and that it no
// longer has; if it voted now, raft could elect two leaders in one term or a
// leader without a committed entry. So until it has caught up with the
// group it is quarantined (GroupConfig.CatchUpBeforeVoting):
//
//   - it drops vote and pre-vote requests (no answer: the candidate counts
//     it as absent, as it would a member that is down);
//   - its election clock does not run, so it never campaigns;
//   - it still accepts the leader's appends and snapshots, which is how it
//     catches up.
//
// It has caught up once it applied the commit index the leader announced in
// its first append (or the index of the first snapshot it received): every
// entry committed before it came back is then in its log again, so its votes
// from then on are those of a member that never lost anything. A member
// that restarts with its data is never quarantined.

// quarantineStep records the leader's first announced commit index and says
// whether m may be stepped into raft (false: a vote request to drop).
func (g *Group) quarantineStep(m *raftpb.Message) bool {
	if !g.quarantined.Load() {
		return true
	}
	switch m.GetType() {
	case raftpb.MsgVote, raftpb.MsgPreVote:
		return false
	case raftpb.MsgApp:
		if g.catchUpTo == 0 && m.GetCommit() > 0 {
			g.catchUpTo = m.GetCommit()
			g.log.Info("joined: catching up before voting", "leader", m.GetFrom(), "commit", g.catchUpTo)
		}
	case raftpb.MsgSnap:
		if i := m.GetSnapshot().GetMetadata().GetIndex(); g.catchUpTo == 0 && i > 0 {
			g.catchUpTo = i
			g.log.Info("joined: catching up from a snapshot before voting", "leader", m.GetFrom(), "index", i)
		}
	}
	return true
}

// quarantineTick lifts the quarantine once caught up and reports whether
// raft's clock may tick (false while quarantined: no election timeout).
func (g *Group) quarantineTick() bool {
	if !g.quarantined.Load() {
		return true
	}
	if g.catchUpTo > 0 && g.applied.Load() >= g.catchUpTo {
		g.quarantined.Store(false)
		g.log.Info("caught up: this member votes from now on", "applied", g.applied.Load(), "caught_up_to", g.catchUpTo)
		return true
	}
	return false
}
