package raftcore

import (
	"fmt"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// The raft goroutine: one loop owns the raft.RawNode, drains its inputs so
// one Ready covers many of them, and runs the Ready contract (handleReady,
// rules 1 to 7 in order).

const maxDrain = 4096

func (g *Group) run() {
	defer close(g.donec)
	defer func() {
		// Shut down the apply side after the raft side: nothing more is
		// enqueued once run() stops.
		g.applyq.close()
		<-g.applyc
		if err := g.ds.close(); err != nil {
			g.log.Error("close wal", "err", err)
		}
		g.failAllProposals(g.stoppedErr())
		g.failReads(g.stoppedErr())
	}()
	// raft panics on an impossible log (e.g. a member that lost its disk
	// but kept its id). Contain it to this group: the other groups in the
	// process keep running.
	defer func() {
		if r := recover(); r != nil {
			g.log.Error("raft panic; stopping group", "panic", r)
			g.stopWith(fmt.Errorf("%w: raft: %v", ErrStopped, r))
		}
	}()
	ticker := time.NewTicker(g.ncfg.TickInterval)
	defer ticker.Stop()
	g.publishStatus()
	for {
		select {
		case <-ticker.C:
			if g.quarantineTick() {
				g.rn.Tick()
			}
			g.ticks++
			g.retryReads()
			g.expireForwarded()
		case pr := <-g.propc:
			g.propose(pr)
		case ms := <-g.recvc:
			g.step(ms)
		case rr := <-g.readc:
			g.readWait = append(g.readWait, rr)
		case r := <-g.reportc:
			g.applyReport(r)
		case f := <-g.ctrlc:
			f()
		case s := <-g.snapc:
			if err := g.compact(s); err != nil {
				g.log.Error("snapshot failed", "index", s.index, "err", err)
			}
		case <-g.stopc:
			return
		}
		// Batching: take everything else that is already waiting before
		// asking raft for a Ready, so many proposals and messages share
		// one WAL write+fsync and one network write.
		g.drain()
		err := g.handleReady()
		// Reads that waited for the batch answered in this Ready go out now.
		if err == nil && g.flushReads() {
			err = g.handleReady()
		}
		if err != nil {
			g.log.Error("storage failure; stopping group", "err", err)
			g.stopWith(fmt.Errorf("%w: %w", ErrStopped, err))
			return
		}
	}
}

func (g *Group) drain() {
	for i := 0; i < maxDrain; i++ {
		select {
		case pr := <-g.propc:
			g.propose(pr)
		case ms := <-g.recvc:
			g.step(ms)
		case rr := <-g.readc:
			g.readWait = append(g.readWait, rr)
		default:
			i = maxDrain
		}
	}
	g.flushReads()
	g.flushProposals()
}

// handleReady runs the Ready contract. The order of the steps is what makes
// it correct; each rule is commented where it applies.
func (g *Group) handleReady() error {
	for g.rn.HasReady() {
		rd := g.rn.Ready()
		if rd.SoftState != nil {
			g.onSoftState(rd.SoftState)
		}
		// Rule 1 (leader only): a leader may send its messages BEFORE its
		// own WAL write (Raft thesis 10.2.1). Its own log position only counts
		// toward the commit quorum after Advance, i.e. after the fsync below,
		// so followers can persist in parallel with the leader.
		isLeader := raft.StateType(g.state.Load()) == raft.StateLeader
		if isLeader {
			g.send(rd.Messages)
		}
		// Rule 6: committed entries go to the apply goroutine in log order,
		// and only once they are durable here. When they all were already
		// written by an earlier Ready (the usual case for the commit-index
		// update) they are handed over right away, so applying overlaps
		// this Ready's WAL write; otherwise after it (below). A snapshot in
		// this Ready must reach the apply goroutine first, so then we wait.
		early := raft.IsEmptySnap(rd.Snapshot) && len(rd.CommittedEntries) > 0 &&
			rd.CommittedEntries[len(rd.CommittedEntries)-1].GetIndex() <= g.durable
		if early {
			g.handCommitted(rd.CommittedEntries)
		}
		// Rule 2: the snapshot file and its WAL marker are written before
		// the HardState/entries that follow it, so a crash never leaves a WAL
		// that refers to a snapshot we cannot load.
		if !raft.IsEmptySnap(rd.Snapshot) {
			if err := g.ds.saveSnapshot(rd.Snapshot); err != nil {
				return err
			}
		}
		// Rule 3: HardState (term, vote, commit) and new entries are made
		// durable (fsync when raft says MustSync) before any follower
		// message is sent: a vote or an append ack is a promise about disk.
		t0 := time.Now()
		if err := g.ds.wal.Save(rd.HardState, rd.Entries); err != nil {
			return fmt.Errorf("wal save: %w", err)
		}
		if len(rd.Entries) > 0 {
			g.ncfg.Metrics.observeWALSave(g.name, time.Since(t0))
		}
		if !raft.IsEmptySnap(rd.Snapshot) {
			g.durable = rd.Snapshot.GetMetadata().GetIndex()
		}
		if n := len(rd.Entries); n > 0 {
			// New entries may overwrite an uncommitted tail: the durable log
			// now ends exactly here.
			g.durable = rd.Entries[n-1].GetIndex()
			if !isLeader {
				g.markInLog(rd.Entries)
			}
		}
		// Rule 4: raft's in-memory storage mirrors disk only after the
		// write, snapshot first (it resets the log), then appended entries.
		if !raft.IsEmptySnap(rd.Snapshot) {
			if err := g.ds.mem.ApplySnapshot(rd.Snapshot); err != nil {
				return fmt.Errorf("apply snapshot to memory: %w", err)
			}
			g.applyq.push(applyItem{snap: rd.Snapshot})
		}
		if err := g.ds.mem.Append(rd.Entries); err != nil {
			return fmt.Errorf("append to memory: %w", err)
		}
		// Rule 5 (followers, candidates): now that state is durable, send.
		if !isLeader {
			g.send(rd.Messages)
		}
		for _, rs := range rd.ReadStates {
			g.onReadState(rs)
		}
		if !early {
			g.handCommitted(rd.CommittedEntries)
		}
		// Rule 7: Advance tells raft the Ready was persisted (and handed to
		// apply); only then does it count the leader's own entries toward
		// commit and emit the next Ready.
		g.rn.Advance(rd)
		g.publishStatus()
	}
	return nil
}

// handCommitted queues committed entries for the apply goroutine. Conf
// changes are applied to raft here (raft requires it from the goroutine
// that owns the node) and the resulting ConfState rides along so snapshots
// record the membership at their index.
func (g *Group) handCommitted(ents []*raftpb.Entry) {
	if len(ents) == 0 {
		return
	}
	items := make([]applyItem, 0, len(ents))
	for _, e := range ents {
		it := applyItem{ent: e}
		if e.GetType() == raftpb.EntryConfChange || e.GetType() == raftpb.EntryConfChangeV2 {
			cs, err := g.applyConfChange(e)
			if err != nil {
				g.log.Error("bad conf change entry", "index", e.GetIndex(), "err", err)
			}
			it.cs = cs
		}
		items = append(items, it)
	}
	g.applyq.push(items...)
}

func (g *Group) publishStatus() {
	st := g.rn.BasicStatus()
	g.lead.Store(st.Lead)
	g.term.Store(st.HardState.GetTerm())
	g.commit.Store(st.HardState.GetCommit())
	g.state.Store(uint32(st.RaftState))
}

// onSoftState fails requests that depended on the previous leader: once
// leadership moved (or is being contested) a forwarded proposal or read may
// have been lost. Outcome unknown, so the error is ErrLeaderLost.
func (g *Group) onSoftState(ss *raft.SoftState) {
	oldLead := g.lead.Load()
	lost := ss.Lead != oldLead || ss.RaftState == raft.StateCandidate || ss.RaftState == raft.StatePreCandidate
	g.lead.Store(ss.Lead)
	g.state.Store(uint32(ss.RaftState))
	if !lost || (oldLead == 0 && ss.Lead != 0) {
		return
	}
	err := fmt.Errorf("group %s: %w (leader %d -> %d)", g.name, ErrLeaderLost, oldLead, ss.Lead)
	g.failAllProposals(err)
	g.failReads(err)
}
