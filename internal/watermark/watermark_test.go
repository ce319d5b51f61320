package watermark

import (
	"context"
	"errors"
	"testing"
)

// Wait returns at once when the index is already reached, and reports how
// it ended otherwise: reached after an Advance, ctx ended, stop closed.
func TestWait(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	closed := make(chan struct{})
	close(closed)
	tests := []struct {
		name      string
		at        uint64 // index before Wait
		waitFor   uint64
		advanceTo uint64 // Advance one by one up to it while waiting (0: none)
		ctx       context.Context
		stop      chan struct{}
		wantAt    uint64
		wantErr   error
	}{
		{name: "already reached", at: 5, waitFor: 5, ctx: context.Background(), wantAt: 5},
		{name: "zero index on a zero mark", ctx: context.Background()},
		{name: "reached by advances", at: 1, waitFor: 7, advanceTo: 7, ctx: context.Background(), wantAt: 7},
		{name: "ctx ended", at: 3, waitFor: 4, ctx: canceled, wantAt: 3, wantErr: context.Canceled},
		{name: "stopped", at: 3, waitFor: 4, ctx: context.Background(), stop: closed, wantAt: 3, wantErr: ErrStopped},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var m Mark
			m.Advance(tc.at)
			// Advances come from another goroutine, one index at a time:
			// Wait must keep waiting through those below waitFor.
			go func() {
				for i := tc.at + 1; i <= tc.advanceTo; i++ {
					m.Advance(i)
				}
			}()
			at, err := m.Wait(tc.ctx, tc.waitFor, tc.stop)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Wait error = %v, want %v", err, tc.wantErr)
			}
			if at != tc.wantAt {
				t.Fatalf("Wait returned index %d, want %d", at, tc.wantAt)
			}
		})
	}
}

// Advance never lowers the index.
func TestAdvanceMonotonic(t *testing.T) {
	tests := []struct {
		name  string
		steps []uint64
		want  uint64
	}{
		{name: "grows", steps: []uint64{1, 2, 9}, want: 9},
		{name: "lower ignored", steps: []uint64{9, 4}, want: 9},
		{name: "equal ignored", steps: []uint64{3, 3}, want: 3},
		{name: "zero", steps: []uint64{0}, want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var m Mark
			for _, s := range tc.steps {
				m.Advance(s)
			}
			if got := m.Load(); got != tc.want {
				t.Fatalf("Load = %d, want %d", got, tc.want)
			}
		})
	}
}
