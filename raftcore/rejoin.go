package raftcore

import (
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

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

// On the leader's side, such a member is stuck: raft never sends a follower
// anything below the index it acknowledged (Progress.Match), and the member
// rejects every append above its empty log. So the leader notices it: a
// rejection whose hint (the follower's last index) is below what that
// follower acknowledged can only come from a member that lost acknowledged
// entries. Progress reports it (MemberProgress.LostLog) and the owner
// replaces the member: remove it, add it back as a learner (fresh progress:
// the leader sends its snapshot or log from the start), promote it once it
// caught up (internal/membership does that).

// noteLostLog marks m's sender as having lost its log if m is such a
// rejection; called by the raft goroutine before stepping m.
func (g *Group) noteLostLog(m *raftpb.Message) {
	if m.GetType() != raftpb.MsgAppResp || !m.GetReject() || g.rn.BasicStatus().RaftState != raft.StateLeader {
		return
	}
	from, hint := m.GetFrom(), m.GetRejectHint()
	var match uint64
	g.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if id == from {
			match = pr.Match
		}
	})
	if hint >= match {
		return
	}
	g.mu.Lock()
	seen := g.lostLog[from]
	g.lostLog[from] = true
	g.mu.Unlock()
	if !seen {
		g.log.Warn("member lost its log (its last index is below what it acknowledged): it must be replaced",
			"peer", from, "acknowledged", match, "last_index", hint)
	}
}

// clampHeartbeatCommit keeps a leader's heartbeat from committing past this
// member's log. The leader announces min(what this member acknowledged, its
// commit index); after a lost disk that is beyond the (empty) log, and raft
// would panic ("tocommit out of range") and stop the group. Clamped, the
// heartbeat is answered, and the leader's next append is rejected, which
// tells the leader the log was lost (noteLostLog).
func (g *Group) clampHeartbeatCommit(m *raftpb.Message) {
	if m.GetType() != raftpb.MsgHeartbeat {
		return
	}
	last, err := g.ds.mem.LastIndex()
	if err != nil || m.GetCommit() <= last {
		return
	}
	if !g.clampWarned {
		g.clampWarned = true
		g.log.Warn("leader's heartbeat commits past this member's log (was its data directory lost?); clamped",
			"leader", m.GetFrom(), "commit", m.GetCommit(), "last_index", last)
	}
	m.Commit = new(last)
}
