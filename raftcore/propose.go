package raftcore

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Proposals: admission (Propose, submit), batching in the raft goroutine
// (propose, flushProposals), and resolving each waiter once its entry is
// applied, lost with a leader, or expired.

type proposal struct {
	pid   uint64
	tick  uint64             // raft-loop tick when proposed (owned by run())
	inLog bool               // seen in this member's log (owned by run())
	data  []byte             // envelope, for normal proposals
	cc    *raftpb.ConfChange // for membership changes
	done  chan propResult    // buffered(1)
}

type propResult struct {
	res Result
	err error
}

// Propose orders p.Data in the group's log and returns once the entry is
// committed AND applied on this member, with the StateMachine's result.
// Errors: ErrNoLeader (not proposed), ErrGroupFull (not proposed),
// ErrTooLarge, ErrLeaderLost / ErrTimeout (outcome unknown: retry with the
// same Session/Seq), ErrStopped, *ApplyError (applied; the SM returned an
// error).
func (g *Group) Propose(ctx context.Context, p Proposal) (Result, error) {
	if len(p.Data) > g.ncfg.MaxProposalBytes {
		return Result{}, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(p.Data), g.ncfg.MaxProposalBytes)
	}
	var flags uint64
	if p.EndSession {
		flags |= envEndSession
	}
	if p.EndOriginSessions {
		flags |= envEndOriginSessions
	}
	pr := &proposal{pid: g.nextID.Add(1), done: make(chan propResult, 1)}
	pr.data = envelope{Origin: g.id, PID: pr.pid, Session: p.Session, Seq: p.Seq, Flags: flags, Data: p.Data}.marshal()
	return g.submit(ctx, pr)
}

func (g *Group) submit(ctx context.Context, pr *proposal) (Result, error) {
	if err := g.waitLeader(ctx); err != nil {
		return Result{}, err
	}
	g.mu.Lock()
	if len(g.props)+int(g.reads.Load()) >= g.ncfg.MaxPending {
		g.mu.Unlock()
		return Result{}, fmt.Errorf("group %s: %w", g.name, ErrGroupFull)
	}
	g.props[pr.pid] = pr
	g.mu.Unlock()
	select {
	case g.propc <- pr:
	default:
		g.forgetProposal(pr.pid)
		return Result{}, fmt.Errorf("group %s: %w", g.name, ErrGroupFull)
	}
	select {
	case r := <-pr.done:
		return r.res, r.err
	case <-ctx.Done():
		g.forgetProposal(pr.pid)
		return Result{}, fmt.Errorf("group %s: propose: %w (%w)", g.name, ErrTimeout, ctx.Err())
	case <-g.donec:
		return Result{}, g.stoppedErr()
	}
}

func (g *Group) forgetProposal(pid uint64) *proposal {
	g.mu.Lock()
	pr := g.props[pid]
	delete(g.props, pid)
	g.mu.Unlock()
	return pr
}

// finishEntry resolves the waiter of an applied entry, but only if the entry
// is really that waiter's proposal (same envelope bytes): entries replayed
// from an earlier incarnation of this member never resolve a new waiter.
func (g *Group) finishEntry(pid uint64, data []byte, res Result, err error) {
	g.mu.Lock()
	pr := g.props[pid]
	match := pr != nil && ((pr.cc == nil && bytes.Equal(pr.data, data)) || (pr.cc != nil && bytes.Equal(pr.cc.GetContext(), data)))
	if match {
		delete(g.props, pid)
	}
	g.mu.Unlock()
	if match {
		pr.done <- propResult{res, err}
	}
}

func (g *Group) finishProposal(pid uint64, res Result, err error) {
	if pr := g.forgetProposal(pid); pr != nil {
		pr.done <- propResult{res, err}
	}
}

func (g *Group) failAllProposals(err error) {
	g.mu.Lock()
	ps := g.props
	g.props = map[uint64]*proposal{}
	g.mu.Unlock()
	for _, pr := range ps {
		pr.done <- propResult{err: err}
	}
}

func (g *Group) propose(pr *proposal) {
	// Skip proposals whose caller already gave up (ctx ended or the
	// proposal was failed by a leader change).
	g.mu.Lock()
	_, live := g.props[pr.pid]
	g.mu.Unlock()
	if !live {
		return
	}
	pr.tick = g.ticks
	if pr.cc == nil {
		g.batch = append(g.batch, pr) // proposed by flushProposals
		return
	}
	g.proposeFailed([]*proposal{pr}, g.rn.ProposeConfChange(pr.cc))
}

// maxBatchBytes caps one coalesced raft entry.
const maxBatchBytes = 256 << 10

// flushProposals coalesces the client proposals drained in this loop
// iteration into as few raft entries as possible (one entry carries many
// envelopes), so the WAL, the append messages and raft's bookkeeping pay
// per batch instead of per request.
func (g *Group) flushProposals() {
	rest := g.batch
	for len(rest) > 0 {
		n, size := 1, len(rest[0].data)
		for n < len(rest) && size+len(rest[n].data) <= maxBatchBytes {
			size += len(rest[n].data)
			n++
		}
		chunk := rest[:n]
		var data []byte
		if n == 1 {
			data = chunk[0].data
		} else {
			datas := make([][]byte, n)
			for i, pr := range chunk {
				datas[i] = pr.data
			}
			data = marshalBatch(datas, size)
		}
		g.proposeFailed(chunk, g.rn.Propose(data))
		g.ncfg.Metrics.observeBatch(g.name, n)
		rest = rest[n:]
	}
	// Reuse the backing array for the next iteration's batch (slicing
	// g.batch itself above would leave it at the array's end), without
	// keeping the proposals alive.
	clear(g.batch)
	g.batch = g.batch[:0]
}

func (g *Group) proposeFailed(prs []*proposal, err error) {
	if err == nil {
		return
	}
	if errors.Is(err, raft.ErrProposalDropped) {
		err = ErrNoLeader // raft refused it: definitely not in the log
	}
	for _, pr := range prs {
		g.finishProposal(pr.pid, Result{}, fmt.Errorf("group %s: %w", g.name, err))
	}
}

// markInLog flags this member's forwarded proposals that reached its log
// (the leader appended them): those are never expired, however slowly
// they are applied.
func (g *Group) markInLog(ents []*raftpb.Entry) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.props) == 0 {
		return
	}
	mark := func(d []byte) {
		if env, err := unmarshalEnvelope(d); err == nil && env.Origin == g.id {
			if pr, ok := g.props[env.PID]; ok {
				pr.inLog = true
			}
		}
	}
	for _, e := range ents {
		if e.GetType() != raftpb.EntryNormal || len(e.GetData()) == 0 {
			continue
		}
		if !isBatch(e.GetData()) {
			mark(e.GetData())
			continue
		}
		ds, _ := unmarshalBatch(e.GetData())
		for _, d := range ds {
			mark(d)
		}
	}
}

// expireForwarded fails proposals this follower forwarded to the leader
// more than two election timeouts ago that never reached its log: the
// forwarded message was probably lost. The outcome is unknown
// (ErrLeaderLost), so callers retry with the same Session/Seq instead of
// waiting for their deadline. The leader never expires its own proposals:
// there they are in its log and only wait for a quorum.
func (g *Group) expireForwarded() {
	limit := uint64(2 * g.ncfg.ElectionTicks)
	if g.ticks%uint64(g.ncfg.ElectionTicks) != 0 || raft.StateType(g.state.Load()) == raft.StateLeader {
		return
	}
	var expired []*proposal
	g.mu.Lock()
	for pid, pr := range g.props {
		if pr.tick != 0 && !pr.inLog && g.ticks-pr.tick > limit {
			expired = append(expired, pr)
			delete(g.props, pid)
		}
	}
	g.mu.Unlock()
	g.ncfg.Metrics.addExpired(g.name, len(expired))
	err := fmt.Errorf("group %s: forwarded proposal unanswered: %w", g.name, ErrLeaderLost)
	for _, pr := range expired {
		pr.done <- propResult{err: err}
	}
}
