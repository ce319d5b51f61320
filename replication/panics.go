package replication

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
)

// ErrPanic marks a panic recovered while serving one connection: only that
// connection ends, the process and every other connection stay up.
var ErrPanic = errors.New("internal error (recovered panic)")

// Paths of smr_connection_panics_total.
const (
	panicPathClient      = "client"       // a client connection's handler (framing, proposing, replying)
	panicPathAppResponse = "app_response" // writing a request to the app and reading its response
	panicPathApply       = "apply"        // applying an ordered entry (decoding, rewriting, executing)
)

// panicked turns a recovered panic value into an error, logs it with the
// goroutine's stack and counts it. Call it from a deferred function that
// called recover() itself (recover only works there).
func panicked(log *slog.Logger, m *groupMetrics, group, path string, p any) error {
	m.connPanic(path)
	log.Error("recovered panic", "group", group, "path", path,
		"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return fmt.Errorf("%w: %v", ErrPanic, p)
}

// applyPanicked handles a panic while applying entry e: the process and the
// group keep running, the client gets an error, and since the entry may or
// may not have reached the app, this replica's app state is uncertain: it
// goes to the repair path (an entry that panics every time ends in the
// repair loop bound, "broken", not in a crash loop of the node's CRI path).
// Every lock of the apply path is released by defer before recover runs.
func (x *Executor) applyPanicked(e raftcore.Entry, p any) []byte {
	err := panicked(x.cfg.Log, x.m, x.cfg.Group, panicPathApply, p)
	x.setApplied(e.Index)
	x.mu.Lock()
	defer x.mu.Unlock()
	x.uncertainLocked(Cause{Kind: CauseApplyPanic, Detail: fmt.Sprintf("index %d: %v", e.Index, err)})
	return x.replyLocked(e, Op{}, fmt.Errorf("%w: applying this request at index %d: %w", framing.ErrUnavailable, e.Index, err))
}
