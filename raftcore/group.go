package raftcore

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/smr-io/smr-cri/internal/watermark"
)

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

	nextID   atomic.Uint64
	mu       sync.Mutex
	props    map[uint64]*proposal // waiting proposals by pid
	reads    atomic.Int64         // ReadIndex calls in flight
	peers    map[uint64]string    // routing table: member id -> address
	members  []uint64             // voters+learners of the latest ConfState
	learners []uint64             // the learners among members
	lostLog  map[uint64]bool      // members seen to have lost acknowledged entries (rejoin.go)

	// quarantined: this member started in join mode with an empty log and
	// has not caught up yet, so it casts no vote and never campaigns
	// (rejoin.go). catchUpTo (owned by run) is the leader's commit index at
	// first contact, 0 until then.
	quarantined atomic.Bool
	catchUpTo   uint64
	clampWarned bool // owned by run: a heartbeat's commit was clamped once

	// reported is the address last given per member by GroupConfig.Peers
	// or SetPeerAddr, to tell a repeat from news (peeraddr.go); under mu.
	reported map[uint64]string

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
		lostLog:     map[uint64]bool{},
		peers:       maps.Clone(cfg.Peers),
		reported:    maps.Clone(cfg.Peers),
		readBatches: map[uint64]*readBatch{},
		sendBuf:     map[uint64][]*raftpb.Message{},
	}
	var applied uint64
	if ds.snapshot != nil {
		applied = ds.snapshot.GetMetadata().GetIndex()
		g.setConfLocked(ds.snapshot.GetMetadata().GetConfState())
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
	if ds.fresh && cfg.Join && cfg.CatchUpBeforeVoting {
		g.quarantined.Store(true)
	}
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

// setConfLocked records the membership of cs; g.mu held (or not shared yet).
func (g *Group) setConfLocked(cs *raftpb.ConfState) {
	g.members = append(append([]uint64(nil), cs.GetVoters()...), cs.GetLearners()...)
	g.learners = append([]uint64(nil), cs.GetLearners()...)
}

// Name returns the group name.
func (g *Group) Name() string { return g.name }

// ID returns this member's id.
func (g *Group) ID() uint64 { return g.id }

// Status returns leader, term, commit/applied indexes and members.
func (g *Group) Status() Status {
	applied := g.applied.Load()
	g.mu.Lock()
	members := make(map[uint64]string, len(g.members))
	for _, id := range g.members {
		members[id] = g.peers[id]
	}
	learners := g.learners
	g.mu.Unlock()
	return Status{
		Group: g.name, ID: g.id, Leader: g.lead.Load(), Term: g.term.Load(),
		State: raft.StateType(g.state.Load()).String(), Applied: applied, Commit: g.commit.Load(),
		Members: members, Learners: slices.Clone(learners), CatchingUp: g.quarantined.Load(), Sessions: int(g.sessions.Load()), EndedSessions: int(g.endedSessions.Load()),
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
