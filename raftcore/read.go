package raftcore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"go.etcd.io/raft/v3"

	"github.com/smr-io/smr-cri/internal/watermark"
)

// Linearizable reads: ReadIndex callers share one raft read request per
// batch; batches are retried on loss and answered from the Ready's
// ReadStates.

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
