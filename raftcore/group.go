package raftcore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/smr-io/smr-cri/internal/watermark"
)

// compactMargin is how many applied entries stay in the log after a
// snapshot, so slightly lagging followers catch up from the log instead of a
// full snapshot.
const compactMargin = 1024

// Group is one member of one raft group. One goroutine (run) owns the
// raft.RawNode; a second one (applyLoop) feeds committed entries to the
// StateMachine. All exported methods are safe for concurrent use.
type Group struct {
	node *Node
	name string
	id   uint64
	cfg  GroupConfig
	ncfg NodeConfig
	log  *slog.Logger
	sm   StateMachine
	ds   *diskStorage
	rn   *raft.RawNode // owned by run()

	propc   chan *proposal
	recvc   chan []*raftpb.Message
	readc   chan *readReq
	reportc chan report
	ctrlc   chan func() // run in the raft goroutine (leadership transfer)
	snapc   chan snapRequest
	applyq  *applyQueue

	stopOnce sync.Once
	stopc    chan struct{}
	donec    chan struct{} // closed when run() returns
	applyc   chan struct{} // closed when applyLoop() returns
	stopErr  atomic.Pointer[error]

	nextID  atomic.Uint64
	mu      sync.Mutex
	props   map[uint64]*proposal // waiting proposals by pid
	reads   atomic.Int64         // ReadIndex calls in flight
	peers   map[uint64]string    // routing table: member id -> address
	members []uint64             // voters+learners of the latest ConfState

	// raft status mirrored by run() after each Ready
	lead, term, commit atomic.Uint64
	state              atomic.Uint32

	// open sessions and tombstones in the session table, published by
	// applyLoop with the applied index
	sessions, endedSessions atomic.Int64

	// applied index published by applyLoop
	applied watermark.Mark

	// forceSnap asks the apply goroutine for a snapshot now: the latest one
	// predates the admission of a member that needs one (prepareSnapshots).
	forceSnap atomic.Bool

	// owned by run()
	readBatches map[uint64]*readBatch
	readWait    []*readReq // reads not yet sent (a batch is in flight)
	readSent    uint64     // tick when the newest batch was sent
	ticks       uint64
	durable     uint64      // last log index written to the WAL
	batch       []*proposal // normal proposals drained, not yet proposed
	sendBuf     map[uint64][]*raftpb.Message
}

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

type readReq struct {
	done chan readResult // buffered(1)
}

// readBatch is one raft ReadIndex request shared by many callers.
type readBatch struct {
	reqs  []*readReq
	since uint64 // tick when (re)sent
	tries int
}

type readResult struct {
	index uint64
	err   error
}

type report struct {
	to                            uint64
	unreachable, snapshot, snapOK bool
}

type snapRequest struct {
	index uint64
	cs    *raftpb.ConfState
	data  []byte
}

func startGroup(n *Node, cfg GroupConfig, sm StateMachine) (*Group, error) {
	ncfg := n.cfg
	ds, err := openDiskStorage(filepath.Join(ncfg.DataDir, cfg.Name), ncfg.UnsafeNoFsync)
	if err != nil {
		return nil, err
	}
	g := &Group{
		node: n, name: cfg.Name, id: cfg.SelfID, cfg: cfg, ncfg: ncfg,
		log:         ncfg.Logger.With("group", cfg.Name, "member", cfg.SelfID),
		sm:          sm,
		ds:          ds,
		propc:       make(chan *proposal, ncfg.MaxPending),
		recvc:       make(chan []*raftpb.Message, 1024),
		readc:       make(chan *readReq, ncfg.MaxPending),
		reportc:     make(chan report, 256),
		ctrlc:       make(chan func(), 16),
		snapc:       make(chan snapRequest, 1),
		applyq:      newApplyQueue(),
		stopc:       make(chan struct{}),
		donec:       make(chan struct{}),
		applyc:      make(chan struct{}),
		props:       map[uint64]*proposal{},
		peers:       maps.Clone(cfg.Peers),
		readBatches: map[uint64]*readBatch{},
		sendBuf:     map[uint64][]*raftpb.Message{},
	}
	var applied uint64
	if ds.snapshot != nil {
		applied = ds.snapshot.GetMetadata().GetIndex()
		g.members = confMembers(ds.snapshot.GetMetadata().GetConfState())
	}
	rc := &raft.Config{
		ID:                        cfg.SelfID,
		ElectionTick:              ncfg.ElectionTicks,
		HeartbeatTick:             ncfg.HeartbeatTicks,
		Storage:                   ds.mem,
		Applied:                   applied,
		MaxSizePerMsg:             1 << 20,
		MaxInflightMsgs:           ncfg.MaxInflightMsgs,
		MaxUncommittedEntriesSize: 1 << 30,
		MaxCommittedSizePerReady:  16 << 20,
		CheckQuorum:               true,
		PreVote:                   true,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{g.log},
	}
	rn, err := raft.NewRawNode(rc)
	if err != nil {
		ds.close()
		return nil, fmt.Errorf("new raw node: %w", err)
	}
	if ds.fresh && !cfg.Join {
		peers := make([]raft.Peer, 0, len(cfg.Peers))
		for id, addr := range cfg.Peers {
			peers = append(peers, raft.Peer{ID: id, Context: envelope{Data: []byte(addr)}.marshal()})
		}
		// Sorted so every member writes the same bootstrap entries.
		sortPeers(peers)
		if err := rn.Bootstrap(peers); err != nil {
			ds.close()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}
	g.rn = rn
	g.applied.Advance(applied)
	if g.durable, err = ds.mem.LastIndex(); err != nil {
		ds.close()
		return nil, fmt.Errorf("last index: %w", err)
	}
	// Proposal ids start at a random point so ids of this incarnation do
	// not repeat those of entries written before a restart.
	g.nextID.Store(rand.Uint64() >> 2)
	if cfg.SnapshotEvery > 0 {
		g.purgeFiles()
	}
	go g.applyLoop(ds.snapshot)
	go g.run()
	return g, nil
}

func sortPeers(p []raft.Peer) {
	for i := 1; i < len(p); i++ {
		for j := i; j > 0 && p[j].ID < p[j-1].ID; j-- {
			p[j], p[j-1] = p[j-1], p[j]
		}
	}
}

func confMembers(cs *raftpb.ConfState) []uint64 {
	out := append([]uint64(nil), cs.GetVoters()...)
	return append(out, cs.GetLearners()...)
}

// Name returns the group name.
func (g *Group) Name() string { return g.name }

// ID returns this member's id.
func (g *Group) ID() uint64 { return g.id }

// ---------------------------------------------------------------- public API

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

// ReadIndex is a linearizable read barrier: it returns the read index once
// this member has applied at least up to it, so a local read of the
// StateMachine afterwards observes every write acknowledged before the call.
func (g *Group) ReadIndex(ctx context.Context) (uint64, error) {
	if err := g.waitLeader(ctx); err != nil {
		return 0, err
	}
	g.mu.Lock()
	full := len(g.props)+int(g.reads.Load()) >= g.ncfg.MaxPending
	g.mu.Unlock()
	if full {
		return 0, fmt.Errorf("group %s: %w", g.name, ErrGroupFull)
	}
	g.reads.Add(1)
	defer g.reads.Add(-1)
	rr := &readReq{done: make(chan readResult, 1)}
	select {
	case g.readc <- rr:
	default:
		return 0, fmt.Errorf("group %s: %w", g.name, ErrGroupFull)
	}
	var idx uint64
	select {
	case r := <-rr.done:
		if r.err != nil {
			return 0, r.err
		}
		idx = r.index
	case <-ctx.Done():
		return 0, fmt.Errorf("group %s: read index: %w (%w)", g.name, ErrTimeout, ctx.Err())
	case <-g.donec:
		return 0, g.stoppedErr()
	}
	if err := g.WaitApplied(ctx, idx); err != nil {
		return 0, err
	}
	return idx, nil
}

// WaitApplied blocks until this member applied index idx (or ctx ends).
func (g *Group) WaitApplied(ctx context.Context, idx uint64) error {
	applied, err := g.applied.Wait(ctx, idx, g.applyc)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, watermark.ErrStopped):
		return g.stoppedErr()
	}
	return fmt.Errorf("group %s: wait applied %d (at %d): %w (%w)", g.name, idx, applied, ErrTimeout, err)
}

// Status returns leader, term, commit/applied indexes and members.
func (g *Group) Status() Status {
	applied := g.applied.Load()
	g.mu.Lock()
	members := make(map[uint64]string, len(g.members))
	for _, id := range g.members {
		members[id] = g.peers[id]
	}
	g.mu.Unlock()
	return Status{
		Group: g.name, ID: g.id, Leader: g.lead.Load(), Term: g.term.Load(),
		State: raft.StateType(g.state.Load()).String(), Applied: applied, Commit: g.commit.Load(),
		Members: members, Sessions: int(g.sessions.Load()), EndedSessions: int(g.endedSessions.Load()),
	}
}

// SetPeerAddr changes where member id is reached, without a membership
// change (e.g. a rescheduled pod got a new IP).
func (g *Group) SetPeerAddr(id uint64, addr string) {
	g.mu.Lock()
	g.peers[id] = addr
	g.mu.Unlock()
}

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

// Stop stops the group's goroutines and closes its WAL. Pending requests
// fail with ErrStopped.
func (g *Group) Stop() error {
	g.stopWith(ErrStopped)
	<-g.donec
	<-g.applyc
	g.node.forget(g)
	return nil
}

func (g *Group) stopWith(err error) {
	g.stopOnce.Do(func() {
		g.stopErr.Store(&err)
		close(g.stopc)
	})
}

func (g *Group) stoppedErr() error {
	if p := g.stopErr.Load(); p != nil {
		return fmt.Errorf("group %s: %w", g.name, *p)
	}
	return fmt.Errorf("group %s: %w", g.name, ErrStopped)
}

// waitLeader gives a short election (two election timeouts) the chance to
// finish before failing with ErrNoLeader, so callers do not see transient
// leaderless moments while still getting a fast, typed error when the
// member is cut off.
func (g *Group) waitLeader(ctx context.Context) error {
	limit := time.Duration(2*g.ncfg.ElectionTicks) * g.ncfg.TickInterval
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-g.donec:
			return g.stoppedErr()
		default:
		}
		st := raft.StateType(g.state.Load())
		if g.lead.Load() != 0 && st != raft.StateCandidate && st != raft.StatePreCandidate {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("group %s: %w", g.name, ErrNoLeader)
		}
		t := time.NewTimer(g.ncfg.TickInterval)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("group %s: waiting for leader: %w (%w)", g.name, ErrTimeout, ctx.Err())
		}
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

func (g *Group) deliver(msgs []*raftpb.Message) {
	select {
	case g.recvc <- msgs:
	default: // overloaded: drop, raft retransmits
	}
}

func (g *Group) report(r report) {
	select {
	case g.reportc <- r:
	default:
	}
}

// ------------------------------------------------------------ raft goroutine

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
			g.rn.Tick()
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

func (g *Group) step(ms []*raftpb.Message) {
	for _, m := range ms {
		// Local message types must never arrive over the network.
		if raft.IsLocalMsg(m.GetType()) {
			continue
		}
		if err := g.rn.Step(m); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
			g.log.Debug("step", "type", m.GetType().String(), "from", m.GetFrom(), "err", err)
		}
	}
}

// flushReads coalesces every waiting read into one raft ReadIndex request:
// one heartbeat round confirms leadership for all of them. While a batch is
// in flight new reads wait for its answer and then go out together, so under
// load a heartbeat round serves many reads instead of a few; a batch
// unanswered for a tick (lost message) no longer holds the next one back.
// It reports whether a request was sent.
func (g *Group) flushReads() bool {
	if len(g.readWait) == 0 || (len(g.readBatches) > 0 && g.ticks == g.readSent) {
		return false
	}
	id := g.nextID.Add(1)
	g.readBatches[id] = &readBatch{reqs: g.readWait, since: g.ticks}
	g.ncfg.Metrics.observeReadBatch(g.name, len(g.readWait))
	g.readWait = nil
	g.readSent = g.ticks
	g.sendReadIndex(id)
	return true
}

// failReads fails every read, sent or waiting.
func (g *Group) failReads(err error) {
	for id, b := range g.readBatches {
		for _, r := range b.reqs {
			r.done <- readResult{err: err}
		}
		delete(g.readBatches, id)
	}
	for _, r := range g.readWait {
		r.done <- readResult{err: err}
	}
	g.readWait = nil
}

func (g *Group) sendReadIndex(id uint64) {
	var ctx [8]byte
	binary.BigEndian.PutUint64(ctx[:], id)
	g.rn.ReadIndex(ctx[:])
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

// retryReads re-sends read requests unanswered for an election timeout
// (the request or its answer may have been lost on the network) and fails
// them after a few tries, so reads do not linger until the caller's
// deadline when the leader stays the same but messages get lost.
func (g *Group) retryReads() {
	for id, b := range g.readBatches {
		if g.ticks-b.since < uint64(g.ncfg.ElectionTicks) {
			continue
		}
		if b.tries >= 3 {
			g.ncfg.Metrics.addExpired(g.name, len(b.reqs))
			err := fmt.Errorf("group %s: read index unanswered: %w", g.name, ErrLeaderLost)
			for _, r := range b.reqs {
				r.done <- readResult{err: err}
			}
			delete(g.readBatches, id)
			continue
		}
		b.tries++
		b.since = g.ticks
		g.sendReadIndex(id)
	}
}

func (g *Group) applyReport(r report) {
	if r.unreachable {
		g.ncfg.Metrics.incUnreachable(g.name)
		g.rn.ReportUnreachable(r.to)
	}
	if r.snapshot {
		st := raft.SnapshotFinish
		if !r.snapOK {
			st = raft.SnapshotFailure
		}
		g.rn.ReportSnapshot(r.to, st)
	}
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

func (g *Group) onReadState(rs raft.ReadState) {
	if len(rs.RequestCtx) != 8 {
		return
	}
	id := binary.BigEndian.Uint64(rs.RequestCtx)
	b, ok := g.readBatches[id]
	if !ok {
		return // answer to a retried request that was already served
	}
	for _, r := range b.reqs {
		r.done <- readResult{index: rs.Index}
	}
	delete(g.readBatches, id)
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
	g.members = confMembers(cs)
	g.mu.Unlock()
	return cs, nil
}

// send groups messages per destination and hands each batch to the
// transport, which never blocks.
func (g *Group) send(msgs []*raftpb.Message) {
	if len(msgs) == 0 {
		return
	}
	for _, m := range msgs {
		g.sendBuf[m.GetTo()] = append(g.sendBuf[m.GetTo()], m)
	}
	for to, ms := range g.sendBuf {
		g.mu.Lock()
		addr, ok := g.peers[to]
		g.mu.Unlock()
		if !ok {
			g.rn.ReportUnreachable(to)
			for _, m := range ms {
				if m.GetType() == raftpb.MsgSnap {
					g.rn.ReportSnapshot(to, raft.SnapshotFailure)
				}
			}
		} else if ms = g.prepareSnapshots(to, addr, ms); len(ms) > 0 {
			g.ncfg.Transport.Send(g.name, to, addr, ms)
		}
		delete(g.sendBuf, to)
	}
}

// compact turns a state machine snapshot taken by the apply goroutine into a
// raft snapshot: durable first (file + WAL marker), then the in-memory log
// is trimmed, keeping compactMargin entries for slow followers.
func (g *Group) compact(s snapRequest) error {
	snap, err := g.ds.mem.CreateSnapshot(s.index, s.cs, s.data)
	if errors.Is(err, raft.ErrSnapOutOfDate) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	if err := g.ds.saveSnapshot(snap); err != nil {
		return err
	}
	if s.index > compactMargin {
		if err := g.ds.mem.Compact(s.index - compactMargin); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("compact: %w", err)
		}
	}
	g.purgeFiles()
	g.ncfg.Metrics.incSnapshots(g.name)
	logBytes, entries, err := g.DiskUsage()
	if err != nil {
		g.log.Warn("disk usage", "err", err)
	}
	g.ncfg.Metrics.setLog(g.name, logBytes, entries)
	g.log.Info("snapshot saved", "index", s.index, "raft_snapshot_bytes", len(s.data), "log_bytes", logBytes, "log_entries", entries)
	return nil
}
