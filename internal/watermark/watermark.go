// Package watermark holds an index that only grows and lets goroutines wait
// until it reaches a value. It is the applied index of a raftcore group and
// of the replication executor (ReadIndex and local reads wait on it).
package watermark

import (
	"context"
	"errors"
	"sync"
)

// ErrStopped is returned by Wait when its stop channel was closed first.
var ErrStopped = errors.New("watermark: stopped")

// Mark is a monotonic index. The zero Mark is at 0 and ready to use; it must
// not be copied after first use.
type Mark struct {
	mu  sync.Mutex
	idx uint64
	// ch is closed and dropped when idx grows, waking every waiter; the
	// next waiter makes a new one (no allocation while nobody waits).
	ch chan struct{}
}

// Load returns the current index.
func (m *Mark) Load() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.idx
}

// Advance raises the index to idx and wakes the waiters; an idx that is not
// above the current index changes nothing.
func (m *Mark) Advance(idx uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if idx <= m.idx {
		return
	}
	m.idx = idx
	if m.ch != nil {
		close(m.ch)
		m.ch = nil
	}
}

// Wait blocks until the index is at least idx (nil), ctx ends (ctx.Err()) or
// stop is closed (ErrStopped). It also returns the index it saw last, for
// the caller's error message.
func (m *Mark) Wait(ctx context.Context, idx uint64, stop <-chan struct{}) (uint64, error) {
	for {
		m.mu.Lock()
		at := m.idx
		if at >= idx {
			m.mu.Unlock()
			return at, nil
		}
		if m.ch == nil {
			m.ch = make(chan struct{})
		}
		ch := m.ch
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return at, ctx.Err()
		case <-stop:
			return at, ErrStopped
		}
	}
}
