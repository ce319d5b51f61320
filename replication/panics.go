package replication

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
)

// ErrPanic marks a panic recovered while serving one connection: only that
// connection ends, the process and every other connection stay up.
var ErrPanic = errors.New("internal error (recovered panic)")

// Paths of smr_connection_panics_total.
const (
	panicPathClient      = "client"       // a client connection's handler (framing, proposing, replying)
	panicPathAppResponse = "app_response" // writing a request to the app and reading its response
)

// panicked turns a recovered panic value into an error, logs it with the
// goroutine's stack and counts it. Call it from a deferred function that
// called recover() itself (recover only works there).
func panicked(log *slog.Logger, m *groupMetrics, group, path string, p any) error {
	m.connPanic(path)
	log.Error("recovered panic; ending only this connection", "group", group, "path", path,
		"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return fmt.Errorf("%w: %v", ErrPanic, p)
}
