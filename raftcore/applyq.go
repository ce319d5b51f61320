package raftcore

import (
	"sync"

	"go.etcd.io/raft/v3/raftpb"
)

// applyItem is one unit of work for the apply goroutine: a committed entry
// (with the ConfState that resulted from it, for conf changes) or a snapshot
// to restore.
type applyItem struct {
	ent  *raftpb.Entry
	cs   *raftpb.ConfState
	snap *raftpb.Snapshot
}

// applyQueue is an unbounded FIFO between the raft goroutine (producer) and
// the apply goroutine (consumer): the raft goroutine never blocks on a slow
// StateMachine (ticks and heartbeats keep flowing); memory is bounded by
// NodeConfig.MaxPending on the proposing side and raft's flow control.
type applyQueue struct {
	mu     sync.Mutex
	items  []applyItem
	closed bool
	signal chan struct{}
}

func newApplyQueue() *applyQueue { return &applyQueue{signal: make(chan struct{}, 1)} }

func (q *applyQueue) push(items ...applyItem) {
	if len(items) == 0 {
		return
	}
	q.mu.Lock()
	q.items = append(q.items, items...)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// pop returns every queued item, blocking while empty; ok is false once the
// queue is closed.
func (q *applyQueue) pop() (items []applyItem, ok bool) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil, false
		}
		if len(q.items) > 0 {
			items, q.items = q.items, nil
			q.mu.Unlock()
			return items, true
		}
		q.mu.Unlock()
		<-q.signal
	}
}

func (q *applyQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}
