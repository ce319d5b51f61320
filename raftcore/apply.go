package raftcore

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// applier is the state owned by the apply goroutine: the replicated session
// table, member addresses and ConfState as of the last applied entry.
type applier struct {
	sessions map[uint64]sessionResult
	// ended lists tombstones (sessions ended at index) in log order, so
	// they expire after GroupConfig.SessionEndGrace entries without a scan;
	// tombs counts the table's records that are tombstones.
	ended    []endedSession
	tombs    int
	addrs    map[uint64]string
	cs       *raftpb.ConfState
	applied  uint64
	lastSnap uint64
	// sinceSnapBytes counts the log bytes applied since lastSnap, for
	// GroupConfig.SnapshotBytes.
	sinceSnapBytes uint64

	// pending is the run of client entries handed to the StateMachine at
	// the next flush (applyRun), with the sessions it holds.
	pending         []pendingEntry
	pendingSessions map[uint64]struct{}
	batch           []Entry
}

// pendingEntry is a client entry whose de-duplication check passed and
// that waits in the current run for the StateMachine.
type pendingEntry struct {
	entry Entry
	env   envelope
	data  []byte // the envelope as proposed, to match the local proposer
}

// applyLoop feeds committed entries to the StateMachine strictly in log
// order, one at a time, resolves local proposers, publishes the applied
// index and takes snapshots.
func (g *Group) applyLoop(initial *raftpb.Snapshot) {
	defer close(g.applyc)
	a := &applier{sessions: map[uint64]sessionResult{}, addrs: map[uint64]string{}, cs: &raftpb.ConfState{},
		pendingSessions: map[uint64]struct{}{}}
	if initial != nil {
		if err := g.restore(a, initial); err != nil {
			g.restoreFailed("restore snapshot at start", err)
			return
		}
	}
	for {
		items, ok := g.applyq.pop()
		if !ok {
			return
		}
		for _, it := range items {
			if it.snap != nil {
				g.applyRun(a)
				if err := g.restore(a, it.snap); err != nil {
					g.restoreFailed("restore received snapshot", err)
					return
				}
				continue
			}
			if it.ent.GetIndex() <= a.applied {
				continue // already covered by a restored snapshot
			}
			if a.housekeepingDue(it.ent.GetIndex(), g.sessionRetention(), g.sessionEndGrace()) {
				g.applyRun(a) // the table must hold the run's results first
			}
			a.sweepSessions(it.ent.GetIndex(), g.sessionRetention())
			a.expireEnded(it.ent.GetIndex(), g.sessionEndGrace())
			g.applyEntry(a, it)
			a.applied = it.ent.GetIndex()
			a.sinceSnapBytes += uint64(len(it.ent.GetData()))
		}
		g.applyRun(a)
		g.publishSessions(a)
		g.applied.Advance(a.applied)
		g.maybeSnapshot(a)
	}
}

// restoreFailed stops the group after a failed snapshot restore. A state
// machine that gave up because the group is stopping (its member is being
// rebuilt, its app wait ended) did not fail: that is logged as such.
func (g *Group) restoreFailed(what string, err error) {
	if errors.Is(err, ErrStopped) {
		g.log.Info(what+" ended by a stop", "err", err)
	} else {
		g.log.Error(what, "err", err)
	}
	g.stopWith(fmt.Errorf("%w: restore snapshot: %w", ErrStopped, err))
}

// publishSessions makes the session table visible to Status (open sessions,
// tombstones) and the metrics (its whole size, only when it changed: the
// gauge is not free per batch).
func (g *Group) publishSessions(a *applier) {
	g.endedSessions.Store(int64(a.tombs))
	if n := int64(len(a.sessions) - a.tombs); g.sessions.Swap(n) != n {
		g.ncfg.Metrics.setSessions(g.name, len(a.sessions))
	}
}

func (g *Group) restore(a *applier, s *raftpb.Snapshot) error {
	md := s.GetMetadata()
	if md.GetIndex() <= a.applied {
		return nil
	}
	st, err := unmarshalSnapshotState(s.GetData())
	if err != nil {
		return err
	}
	if sn, ok := g.sm.(StreamSnapshotter); ok {
		t0 := time.Now()
		size := len(st.SM)
		if st.Ext != nil {
			size = int(st.Ext.Size)
			err = g.restoreStateFile(sn, md.GetIndex(), st.Ext)
		} else {
			// A snapshot written before state files (or inlined by a
			// transport without streaming) carries the state itself.
			err = sn.RestoreFrom(md.GetIndex(), bytes.NewReader(st.SM))
		}
		if err != nil {
			return fmt.Errorf("state machine restore: %w", err)
		}
		g.ncfg.Metrics.observeRestore(g.name, size, time.Since(t0))
		g.log.Info("snapshot restored", "index", md.GetIndex(), "bytes", size, "duration", time.Since(t0).String())
	} else if st.Ext != nil {
		return errors.New("snapshot has a state file but the StateMachine is not a StreamSnapshotter")
	} else if sn, ok := g.sm.(Snapshotter); ok {
		if err := sn.Restore(st.SM); err != nil {
			return fmt.Errorf("state machine restore: %w", err)
		}
	} else if len(st.SM) > 0 {
		return errors.New("snapshot has state machine data but the StateMachine is not a Snapshotter")
	}
	a.sessions, a.addrs = st.Sessions, st.Addrs
	a.ended = endedFromTable(a.sessions)
	a.tombs = len(a.ended)
	g.publishSessions(a)
	a.cs = md.GetConfState()
	a.applied, a.lastSnap, a.sinceSnapBytes = md.GetIndex(), md.GetIndex(), 0
	g.mu.Lock()
	for id, addr := range st.Addrs {
		if _, ok := g.peers[id]; !ok {
			g.peers[id] = addr
		}
	}
	g.setConfLocked(a.cs)
	g.mu.Unlock()
	g.applied.Advance(a.applied)
	return nil
}

func (g *Group) applyEntry(a *applier, it applyItem) {
	e := it.ent
	switch e.GetType() {
	case raftpb.EntryNormal:
		if len(e.GetData()) == 0 {
			return // empty entry a new leader appends to commit its term
		}
		datas := [][]byte{e.GetData()}
		if isBatch(e.GetData()) {
			var err error
			if datas, err = unmarshalBatch(e.GetData()); err != nil {
				g.log.Error("skipping malformed batch entry", "index", e.GetIndex(), "err", err)
				return
			}
		}
		// Requests coalesced into one raft entry are applied one by one,
		// in batch order; they share the entry's Index and Term.
		for _, d := range datas {
			env, err := unmarshalEnvelope(d)
			if err != nil {
				g.log.Error("skipping malformed entry", "index", e.GetIndex(), "err", err)
				continue
			}
			g.applyNormal(a, e, env, d)
		}
	case raftpb.EntryConfChange:
		g.applyRun(a)
		if it.cs != nil {
			a.cs = it.cs
		}
		cc := &raftpb.ConfChange{}
		if err := proto.Unmarshal(e.GetData(), cc); err != nil {
			return
		}
		env, _ := unmarshalEnvelope(cc.GetContext())
		switch cc.GetType() {
		case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
			a.addrs[cc.GetNodeId()] = string(env.Data)
		case raftpb.ConfChangeRemoveNode:
			delete(a.addrs, cc.GetNodeId())
		}
		if env.Origin == g.id {
			g.finishEntry(env.PID, cc.GetContext(), Result{Index: e.GetIndex(), Term: e.GetTerm()}, nil)
		}
		// A removed member is not stopped here: a replay may show its
		// removal followed by its re-admission (ReplaceMember). Without a
		// seat it cannot campaign, so it stays idle until the owner stops
		// it (Status().Members no longer lists it).
		if cc.GetType() == raftpb.ConfChangeRemoveNode && cc.GetNodeId() == g.id {
			g.log.Info("this member was removed from the group", "index", e.GetIndex())
		}
	case raftpb.EntryConfChangeV2:
		g.applyRun(a)
		if it.cs != nil {
			a.cs = it.cs
		}
	}
}

// sessionSweepEvery is how often (in log entries) idle sessions are
// forgotten.
const sessionSweepEvery = 4096

func (g *Group) sessionEndGrace() uint64 {
	if g.cfg.SessionEndGrace == 0 {
		return 1 << 16
	}
	return g.cfg.SessionEndGrace
}

func (g *Group) sessionRetention() uint64 {
	if g.cfg.SessionRetention == 0 {
		return 1 << 20
	}
	return g.cfg.SessionRetention
}

// housekeepingDue says whether sweepSessions or expireEnded would change
// the table at index: the pending run must be recorded before they do.
func (a *applier) housekeepingDue(index, retention, grace uint64) bool {
	if len(a.pending) == 0 {
		return false
	}
	sweep := index/sessionSweepEvery != a.applied/sessionSweepEvery && index > retention
	return sweep || (len(a.ended) > 0 && a.ended[0].index+grace < index)
}

// sweepSessions forgets sessions idle for more than retention entries,
// each time the log crosses a multiple of sessionSweepEvery. It depends
// only on the log index and the replicated table, so every member (and a
// member restored from a snapshot) makes the same decision at the same
// position.
func (a *applier) sweepSessions(index, retention uint64) {
	if index/sessionSweepEvery == a.applied/sessionSweepEvery || index <= retention {
		return
	}
	for id, r := range a.sessions {
		if r.Index < index-retention {
			a.forget(id)
		}
	}
}

// applyNormal de-duplicates one client entry by (session, seq) and adds it
// to the run the StateMachine gets at the next flush (applyRun). The session
// table is replicated state (part of snapshots), so every member makes the
// same dedup decision; a session already in the run is flushed first, so its
// check sees the run's result.
func (g *Group) applyNormal(a *applier, e *raftpb.Entry, env envelope, d []byte) {
	if env.Session != 0 {
		if _, ok := a.pendingSessions[env.Session]; ok {
			g.applyRun(a)
		}
		if last, ok := a.sessions[env.Session]; ok && env.Seq <= last.Seq {
			res, err := g.duplicate(env, last, e)
			if env.Origin == g.id {
				g.finishEntry(env.PID, d, res, err)
			}
			return
		}
	}
	// Ending every session of an origin touches the whole table: it runs
	// alone, so no entry of the run is checked against a table it changes.
	alone := env.Flags&envEndOriginSessions != 0
	if alone {
		g.applyRun(a)
	}
	a.pending = append(a.pending, pendingEntry{env: env, data: d, entry: Entry{
		Group: g.name, Index: e.GetIndex(), Term: e.GetTerm(), Data: env.Data,
		Session: env.Session, Seq: env.Seq, Origin: env.Origin,
	}})
	if env.Session != 0 {
		a.pendingSessions[env.Session] = struct{}{}
	}
	if alone || len(a.pending) >= MaxApplyBatch {
		g.applyRun(a)
	}
}

// duplicate is the answer to a retry of a session's last applied request
// (its first result) or to an older one (ErrStaleSeq).
func (g *Group) duplicate(env envelope, last sessionResult, e *raftpb.Entry) (Result, error) {
	if env.Seq < last.Seq {
		return Result{Index: e.GetIndex(), Term: e.GetTerm()},
			fmt.Errorf("group %s: session %d seq %d < %d: %w", g.name, env.Session, env.Seq, last.Seq, ErrStaleSeq)
	}
	res := Result{Index: last.Index, Term: last.Term, Value: last.Value}
	if last.ErrMsg != "" {
		return res, &ApplyError{Msg: last.ErrMsg}
	}
	return res, nil
}

// applyRun hands the pending run to the StateMachine, then records each
// entry's result in the session table and resolves local proposers, in log
// order.
func (g *Group) applyRun(a *applier) {
	if len(a.pending) == 0 {
		return
	}
	a.batch = a.batch[:0]
	for _, p := range a.pending {
		a.batch = append(a.batch, p.entry)
	}
	results := g.applyEntries(a.batch)
	for i, p := range a.pending {
		env := p.env
		res := Result{Index: p.entry.Index, Term: p.entry.Term, Value: results[i].Value}
		var err error
		var errMsg string
		if results[i].Err != nil {
			errMsg = results[i].Err.Error()
			err = &ApplyError{Msg: errMsg}
		}
		if env.Session != 0 {
			if last, ok := a.sessions[env.Session]; ok && last.EndedAt != 0 {
				a.tombs-- // an ended session used again is open again
			}
			a.sessions[env.Session] = sessionResult{Origin: env.Origin, Seq: env.Seq, Index: res.Index, Term: res.Term,
				Value: res.Value, ErrMsg: errMsg}
		}
		a.endSessions(env, res.Index)
		if env.Origin == g.id {
			g.finishEntry(env.PID, p.data, res, err)
		}
	}
	clear(a.pending)
	a.pending = a.pending[:0]
	clear(a.pendingSessions)
}

// applyEntries runs one batch through the StateMachine (ApplyAll),
// guarding the proposers against a batch result of the wrong length.
func (g *Group) applyEntries(es []Entry) []ApplyResult {
	out := ApplyAll(g.sm, es)
	if len(out) == len(es) {
		return out
	}
	// A StateMachine bug; never let it shift results between proposers.
	g.log.Error("ApplyBatch returned the wrong number of results", "entries", len(es), "results", len(out))
	fixed := make([]ApplyResult, len(es))
	for i := range fixed {
		fixed[i].Err = fmt.Errorf("group %s: state machine returned %d results for %d entries", g.name, len(out), len(es))
	}
	return fixed
}

// ApplyAll applies es in order: at once when sm is a BatchStateMachine,
// else entry by entry.
func ApplyAll(sm StateMachine, es []Entry) []ApplyResult {
	if b, ok := sm.(BatchStateMachine); ok {
		return b.ApplyBatch(es)
	}
	out := make([]ApplyResult, len(es))
	for i, e := range es {
		out[i].Value, out[i].Err = sm.Apply(e)
	}
	return out
}

type endedSession struct{ index, id uint64 }

// forget removes session id from the table.
func (a *applier) forget(id uint64) {
	if r, ok := a.sessions[id]; ok {
		if r.EndedAt != 0 {
			a.tombs--
		}
		delete(a.sessions, id)
	}
}

// endSessions ends the sessions that the applied entry at index ends
// (Proposal.EndSession, EndOriginSessions): each becomes a tombstone that
// keeps refusing late copies of its proposals until expireEnded drops it.
// Like the rest of apply it only depends on the log, so every member's
// table stays identical.
func (a *applier) endSessions(env envelope, index uint64) {
	end := func(id uint64) {
		if r, ok := a.sessions[id]; ok && r.EndedAt == 0 {
			r.EndedAt = index
			a.sessions[id] = r
			a.tombs++
			a.ended = append(a.ended, endedSession{index: index, id: id})
		}
	}
	if env.Flags&envEndSession != 0 {
		end(env.Session)
	}
	if env.Flags&envEndOriginSessions != 0 {
		var ids []uint64
		for id, r := range a.sessions {
			if r.Origin == env.Origin {
				ids = append(ids, id)
			}
		}
		// Sorted so every member lists the tombstones in the same order.
		slices.Sort(ids)
		for _, id := range ids {
			end(id)
		}
	}
}

// expireEnded drops the tombstones of sessions that ended more than grace
// entries before index.
func (a *applier) expireEnded(index, grace uint64) {
	n := 0
	for n < len(a.ended) && a.ended[n].index+grace < index {
		e := a.ended[n]
		// The session may have been swept, or used again after its end.
		if r, ok := a.sessions[e.id]; ok && r.EndedAt == e.index {
			a.forget(e.id)
		}
		n++
	}
	if n > 0 {
		a.ended = slices.Delete(a.ended, 0, n)
	}
}

// endedFromTable rebuilds the tombstone list of a restored session table.
func endedFromTable(t map[uint64]sessionResult) []endedSession {
	var out []endedSession
	for id, r := range t {
		if r.EndedAt != 0 {
			out = append(out, endedSession{index: r.EndedAt, id: id})
		}
	}
	slices.SortFunc(out, func(a, b endedSession) int {
		return cmp.Or(cmp.Compare(a.index, b.index), cmp.Compare(a.id, b.id))
	})
	return out
}

// maybeSnapshot captures the state machine at exactly a.applied and hands it
// to the raft goroutine, which persists it and compacts the log.
func (g *Group) maybeSnapshot(a *applier) {
	due := g.cfg.SnapshotEvery > 0 && (a.applied-a.lastSnap >= g.cfg.SnapshotEvery ||
		(g.cfg.SnapshotBytes > 0 && a.sinceSnapBytes >= g.cfg.SnapshotBytes && a.applied > a.lastSnap) ||
		(g.forceSnap.Load() && a.applied > a.lastSnap))
	if !due || len(g.snapc) > 0 {
		return // not due, or the previous snapshot is still being written
	}
	t0 := time.Now()
	st := snapshotState{Sessions: a.sessions, Addrs: a.addrs}
	var size int
	var err error
	switch sn := g.sm.(type) {
	case StreamSnapshotter:
		// Streamed to the group's state file, never held in memory.
		st.Ext, err = g.writeStateFile(a.applied, func(w io.Writer) (int64, error) {
			return 0, sn.SnapshotTo(a.applied, w)
		})
		if st.Ext != nil {
			size = int(st.Ext.Size)
		}
	case Snapshotter:
		st.SM, err = sn.Snapshot()
		size = len(st.SM)
	default:
		return
	}
	if err != nil {
		g.log.Warn("state machine snapshot failed; retrying after the next entries", "index", a.applied, "err", err)
		return
	}
	g.ncfg.Metrics.observeSnapshot(g.name, a.applied, size, time.Since(t0))
	req := snapRequest{index: a.applied, cs: proto.Clone(a.cs).(*raftpb.ConfState), data: st.marshal()}
	select {
	case g.snapc <- req:
		a.lastSnap, a.sinceSnapBytes = a.applied, 0
		g.forceSnap.Store(false)
	default: // previous snapshot still being written; try after next batch
	}
}
