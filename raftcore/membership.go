package raftcore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Membership and leadership: changes go through raft ConfChanges and take
// effect when applied (applyConfChange); peer addresses are routing only.

// ReplaceMember re-admits member id with an empty log: use it when the
// member's disk state was lost (raft must not see a known member forget
// its log). It removes id, then adds it back at addr; then start the member
// with GroupConfig.Join=true.
func (g *Group) ReplaceMember(ctx context.Context, id uint64, addr string) error {
	if id == g.id {
		return fmt.Errorf("%w: a member cannot replace itself", ErrInvalidConfig)
	}
	if err := g.RemoveMember(ctx, id); err != nil {
		return fmt.Errorf("replace member %d: remove: %w", id, err)
	}
	if err := g.AddMember(ctx, id, addr); err != nil {
		return fmt.Errorf("replace member %d: add: %w", id, err)
	}
	return nil
}

// AddMember adds member id (reachable at addr) as a voter through a raft
// ConfChange and returns once the change is applied here. Start the new
// member with GroupConfig.Join=true.
func (g *Group) AddMember(ctx context.Context, id uint64, addr string) error {
	if id == 0 || addr == "" {
		return fmt.Errorf("%w: add member needs id > 0 and an address", ErrInvalidConfig)
	}
	g.SetPeerAddr(id, addr)
	return g.confChange(ctx, raftpb.ConfChangeAddNode, id, addr)
}

// AddLearner adds member id (reachable at addr) as a learner: it receives
// the log (or a snapshot) but does not vote and does not count toward the
// quorum, so a new member catching up does not lower the group's fault
// tolerance. PromoteMember makes it a voter once it caught up (Progress).
// Start the new member with GroupConfig.Join=true. Adding a member that is
// already a learner is a no-op entry.
func (g *Group) AddLearner(ctx context.Context, id uint64, addr string) error {
	if id == 0 || addr == "" {
		return fmt.Errorf("%w: add learner needs id > 0 and an address", ErrInvalidConfig)
	}
	g.SetPeerAddr(id, addr)
	return g.confChange(ctx, raftpb.ConfChangeAddLearnerNode, id, addr)
}

// PromoteMember makes learner id a voter (a no-op entry for a voter).
func (g *Group) PromoteMember(ctx context.Context, id uint64) error {
	if id == 0 {
		return fmt.Errorf("%w: promote member needs id > 0", ErrInvalidConfig)
	}
	return g.confChange(ctx, raftpb.ConfChangeAddNode, id, "")
}

// MemberProgress is the leader's view of one member's log.
type MemberProgress struct {
	Match   uint64 // highest log index known to be on that member
	Learner bool
	// LostLog: the member answered with a log shorter than what it had
	// acknowledged (it lost its disk and came back under its id). Raft
	// cannot bring it back by itself: remove it and add it again
	// (rejoin.go).
	LostLog bool
}

// Progress returns the leader's commit index and every member's progress.
// It fails with ErrInvalidConfig when this member is not the leader (only
// the leader tracks the others).
func (g *Group) Progress(ctx context.Context) (commit uint64, _ map[uint64]MemberProgress, _ error) {
	type answer struct {
		commit uint64
		prs    map[uint64]MemberProgress
		err    error
	}
	ac := make(chan answer, 1)
	f := func() {
		st := g.rn.Status()
		if st.RaftState != raft.StateLeader {
			ac <- answer{err: fmt.Errorf("%w: member %d is not the leader", ErrInvalidConfig, g.id)}
			return
		}
		prs := make(map[uint64]MemberProgress, len(st.Progress))
		g.mu.Lock()
		for id, pr := range st.Progress {
			prs[id] = MemberProgress{Match: pr.Match, Learner: pr.IsLearner, LostLog: g.lostLog[id]}
		}
		g.mu.Unlock()
		ac <- answer{commit: st.HardState.GetCommit(), prs: prs}
	}
	select {
	case g.ctrlc <- f:
	case <-ctx.Done():
		return 0, nil, fmt.Errorf("group %s: progress: %w (%w)", g.name, ErrTimeout, ctx.Err())
	case <-g.donec:
		return 0, nil, g.stoppedErr()
	}
	select {
	case a := <-ac:
		return a.commit, a.prs, a.err
	case <-ctx.Done():
		return 0, nil, fmt.Errorf("group %s: progress: %w (%w)", g.name, ErrTimeout, ctx.Err())
	case <-g.donec:
		return 0, nil, g.stoppedErr()
	}
}

// RemoveMember removes member id through a raft ConfChange.
func (g *Group) RemoveMember(ctx context.Context, id uint64) error {
	if id == 0 {
		return fmt.Errorf("%w: remove member needs id > 0", ErrInvalidConfig)
	}
	return g.confChange(ctx, raftpb.ConfChangeRemoveNode, id, "")
}

func (g *Group) confChange(ctx context.Context, t raftpb.ConfChangeType, id uint64, addr string) error {
	pr := &proposal{pid: g.nextID.Add(1), done: make(chan propResult, 1)}
	pr.cc = &raftpb.ConfChange{
		Type: t.Enum(), NodeId: new(id),
		Context: envelope{Origin: g.id, PID: pr.pid, Data: []byte(addr)}.marshal(),
	}
	_, err := g.submit(ctx, pr)
	return err
}

// TransferLeadership asks the leader (this member) to hand leadership to
// member `to` (0 = the most up-to-date other voter) and waits until another
// member leads. Use it before stopping the leader's pod, so the group does
// not wait an election timeout. It fails with ErrInvalidConfig when this
// member is not the leader or no target exists.
func (g *Group) TransferLeadership(ctx context.Context, to uint64) error {
	errc := make(chan error, 1)
	f := func() {
		st := g.rn.Status()
		if st.RaftState != raft.StateLeader {
			errc <- fmt.Errorf("%w: member %d is not the leader", ErrInvalidConfig, g.id)
			return
		}
		target := to
		if target == 0 {
			var best uint64
			for id, pr := range st.Progress {
				if id != g.id && !pr.IsLearner && (target == 0 || pr.Match > best) {
					target, best = id, pr.Match
				}
			}
		}
		if pr, ok := st.Progress[target]; !ok || target == g.id || pr.IsLearner {
			errc <- fmt.Errorf("%w: no voter %d to transfer leadership to", ErrInvalidConfig, target)
			return
		}
		g.rn.TransferLeader(target)
		errc <- nil
	}
	select {
	case g.ctrlc <- f:
	case <-ctx.Done():
		return fmt.Errorf("group %s: transfer leadership: %w (%w)", g.name, ErrTimeout, ctx.Err())
	case <-g.donec:
		return g.stoppedErr()
	}
	select {
	case err := <-errc:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		return fmt.Errorf("group %s: transfer leadership: %w (%w)", g.name, ErrTimeout, ctx.Err())
	case <-g.donec:
		return g.stoppedErr()
	}
	for {
		if l := g.lead.Load(); l != 0 && l != g.id {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("group %s: transfer leadership: %w (%w)", g.name, ErrTimeout, ctx.Err())
		case <-g.donec:
			return g.stoppedErr()
		case <-time.After(g.ncfg.TickInterval):
		}
	}
}

func (g *Group) applyConfChange(e *raftpb.Entry) (*raftpb.ConfState, error) {
	var cc raftpb.ConfChangeI
	if e.GetType() == raftpb.EntryConfChange {
		c := &raftpb.ConfChange{}
		if err := proto.Unmarshal(e.GetData(), c); err != nil {
			return nil, fmt.Errorf("decode conf change: %w", err)
		}
		cc = c
		// Routing: learn the address of an added member unless we already
		// have one (from GroupConfig.Peers or SetPeerAddr, which are newer
		// than what the log says on replay).
		if c.GetType() == raftpb.ConfChangeAddNode || c.GetType() == raftpb.ConfChangeAddLearnerNode {
			if env, err := unmarshalEnvelope(c.GetContext()); err == nil && len(env.Data) > 0 {
				g.mu.Lock()
				if _, ok := g.peers[c.GetNodeId()]; !ok {
					g.peers[c.GetNodeId()] = string(env.Data)
				}
				g.mu.Unlock()
			}
		}
	} else {
		c := &raftpb.ConfChangeV2{}
		if err := proto.Unmarshal(e.GetData(), c); err != nil {
			return nil, fmt.Errorf("decode conf change v2: %w", err)
		}
		cc = c
	}
	cs := g.rn.ApplyConfChange(cc)
	g.mu.Lock()
	g.setConfLocked(cs)
	for id := range g.lostLog {
		if !slices.Contains(g.members, id) {
			delete(g.lostLog, id) // removed: re-added with fresh progress
		}
	}
	g.mu.Unlock()
	return cs, nil
}

// MemberCheck returns an isMember function for the transport's peer
// authorization (pki.NewMember): it answers for group from the membership of
// the Group in *grp, which may be stored after the function is built (the
// transport starts before the group). Other groups, and group while *grp is
// still nil or has no membership yet (a member joining with an empty log,
// waiting for the leader's first append), are accepted: raft drops what is
// not its own.
//
// It is asked for every received frame and Status copies the membership, so
// the membership is re-read at most once per maxAge: a removed member's
// streams are refused within maxAge.
func MemberCheck(grp *atomic.Pointer[Group], group string, maxAge time.Duration) func(group string, member uint64) bool {
	var mu sync.Mutex
	var members map[uint64]string
	var readAt time.Time
	return func(name string, member uint64) bool {
		g := grp.Load()
		if g == nil || name != group {
			return true
		}
		mu.Lock()
		defer mu.Unlock()
		if now := time.Now(); members == nil || now.Sub(readAt) > maxAge {
			members, readAt = g.Status().Members, now
		}
		if len(members) == 0 {
			return true
		}
		_, ok := members[member]
		return ok
	}
}
