package replication

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
)

// Replica states (ReplicaState, smr_replica_state).
const (
	StateServing    = "serving"
	StateRebuilding = "rebuilding"
	StateBroken     = "broken"
)

// ReplicaState is "serving" while the app is known to be at the log's state,
// "rebuilding" while it is brought there (a repair, or entries waiting for an
// unreachable app) and "broken" when this replica cannot follow the log.
func (x *Executor) ReplicaState() string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.stateLocked()
}

func (x *Executor) stateLocked() string {
	switch {
	case x.broken != nil:
		return StateBroken
	case len(x.queue) > 0 || x.restoring.Load():
		return StateRebuilding
	}
	return StateServing
}

// publishStateLocked sets smr_replica_state after a change.
func (x *Executor) publishStateLocked() { x.m.setState(x.stateLocked()); x.keepStateLocked() }

// Cause of a repair: Kind is a short label (metrics, trace), Detail says
// what happened. Donors are members known to hold the right state (an
// audit's majority): a replica repaired for a cause with donors installs
// one of their snapshots, never its own, which may hold the fault.
type Cause struct {
	Kind, Detail string
	Donors       []uint64
}

// Repair causes.
const (
	CauseInFlight         = "in-flight-at-restart" // an entry was in flight to the app when smr-cri stopped
	CauseContainerRestart = "container-restart"    // the app's container is created again in the same sandbox
	CauseQueueOverflow    = "queue-overflow"       // the app stayed unreachable for more entries than the queue holds
	CauseSessionBroken    = "session-broken"       // an app connection failed on this replica only
	CauseApplyPanic       = "apply-panic"          // applying an entry panicked (recovered) after it may have reached the app
)

// OnUncertain registers f, called (on its own goroutine) when this replica's
// app state became uncertain while it runs: the queue overflowed, or an app
// connection failed here (its later requests would be skipped here only).
// The member repairs the replica there.
func (x *Executor) OnUncertain(f func(Cause)) { x.uncertain.Store(&f) }

// uncertainLocked reports c to the OnUncertain hook, unless the executor is
// closing (its connections end on purpose then) or fenced (its repair is
// under way already: the fence itself breaks its sessions).
func (x *Executor) uncertainLocked(c Cause) {
	select {
	case <-x.closed:
		return
	default:
	}
	if x.fenced.Load() {
		return
	}
	if f := x.uncertain.Load(); f != nil {
		go (*f)(c)
	}
}

// ErrRepairLoop: the member was repaired too often in a short time (the same
// failure again and again, e.g. an app that runs out of memory replaying
// the log); it stays broken instead of looping.
var ErrRepairLoop = errors.New("replication: repairs keep failing")

// Fence stops this replica from serving at once: no entry and no local read
// reaches the app until RestoreApp brought it to a known state. It is what
// a restarted (empty) app container needs before it exists.
func (x *Executor) Fence() {
	x.restoring.Store(true)
	x.degraded.Store(true)
	x.fenced.Store(true)
	// The state gauge follows once mu is free (see restoring).
	go func() {
		x.mu.Lock()
		defer x.mu.Unlock()
		x.publishStateLocked()
	}()
}

// emptyAppRequests empty a RESP app: every database, and the functions
// library (Redis 7; an older Redis answers "unknown command", which is fine:
// it has no functions).
var emptyAppRequests = []framing.Request{
	{Raw: []byte("*1\r\n$8\r\nFLUSHALL\r\n"), Op: "FLUSHALL"},
	{Raw: []byte("*2\r\n$8\r\nFUNCTION\r\n$5\r\nFLUSH\r\n"), Op: "FUNCTION"},
}

// RestoreApp implements AppRestorer: it stops serving, closes every app
// connection and empties the app, so the log can be replayed into it from
// the start (returned index 0). There are no app snapshots yet; a
// snapshot-backed restore plugs in as another AppRestorer. The app may still
// be starting: unreachable apps are retried until ctx ends. A repair that
// cannot succeed marks the replica broken with the reason and returns it.
func (x *Executor) RestoreApp(ctx context.Context, cause Cause) (uint64, error) {
	x.restoring.Store(true)
	x.degraded.Store(true)
	x.mu.Lock()
	defer x.mu.Unlock()
	x.publishStateLocked()
	defer func() {
		x.fenced.Store(false)
		x.restoring.Store(false)
		x.publishStateLocked()
	}()
	start := time.Now()
	x.cfg.Log.Warn("repair: bringing the app to a known state (empty) and replaying the log from the start",
		"group", x.cfg.Group, "cause", cause.Kind, "detail", cause.Detail)
	x.closeAllConnsLocked()
	err := x.emptyApp(ctx)
	x.m.repair(cause.Kind, err == nil)
	x.cfg.Trace.Write(TraceLine{Kind: "repair", Group: x.cfg.Group, Op: cause.Kind, Origin: x.cfg.Self,
		Latency: time.Since(start), Exec: time.Since(start)})
	if err != nil {
		x.broken = fmt.Errorf("%w: repair failed (%s: %s): %w", ErrNotReady, cause.Kind, cause.Detail, err)
		x.cfg.Log.Error("repair failed; this replica is broken", "group", x.cfg.Group, "err", x.broken)
		return 0, x.broken
	}
	x.degraded.Store(len(x.queue) > 0)
	return 0, nil
}

// emptyApp empties the app through its own protocol, retrying while it is
// unreachable. Only RESP apps can be emptied; an HTTP app's state can only
// be brought back by a restart of its container (or, later, a snapshot).
func (x *Executor) emptyApp(ctx context.Context) error {
	var port Port
	for _, p := range x.cfg.Ports {
		if p.Protocol == framing.ProtoRESP {
			port = p
			break
		}
	}
	if port.Number == 0 {
		return fmt.Errorf("the app speaks %s, which has no way to empty it (no app snapshot): restart the pod", x.cfg.Ports[0].Protocol)
	}
	for {
		err := x.emptyAppOnce(ctx, port)
		if err == nil {
			return nil
		}
		var dialErr *dialError
		if !errors.As(err, &dialErr) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("app unreachable until the repair's deadline: %w", err)
		case <-x.closed:
			return fmt.Errorf("executor closed during repair: %w", err)
		case <-time.After(x.cfg.RetryInterval):
		}
	}
}

type dialError struct{ err error }

func (e *dialError) Error() string { return "dial app: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func (x *Executor) emptyAppOnce(ctx context.Context, port Port) error {
	dctx, cancel := context.WithTimeout(ctx, x.cfg.DialTimeout)
	conn, err := x.cfg.Dialer.DialApp(dctx, port.Number)
	cancel()
	if err != nil {
		return &dialError{err}
	}
	defer conn.Close()
	f, err := framing.New(port.Protocol, x.cfg.Framing)
	if err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	for _, req := range emptyAppRequests {
		if err := roundTrip(conn, r, f, req, x.cfg.AppTimeout); err != nil {
			return err
		}
	}
	return nil
}

// roundTrip sends req on conn and checks the reply is not an error, except
// an unknown command (FUNCTION on Redis < 7).
func roundTrip(conn net.Conn, r *bufio.Reader, f framing.Framer, req framing.Request, timeout time.Duration) error {
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(req.Raw); err != nil {
		return fmt.Errorf("%s: write: %w", req.Op, err)
	}
	resp, err := f.ReadResponse(r, req)
	if err != nil {
		return fmt.Errorf("%s: read reply: %w", req.Op, err)
	}
	if len(resp) > 0 && resp[0] == '-' && !strings.Contains(strings.ToLower(string(resp)), "unknown command") {
		return fmt.Errorf("%s: app answered %q", req.Op, strings.TrimSpace(string(resp)))
	}
	return nil
}

var _ AppRestorer = (*Executor)(nil)
var _ raftcore.StateMachine = (*Executor)(nil)

// breakWith marks the replica broken with err (it refuses every request).
func (x *Executor) breakWith(err error, cause string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.broken = err
	x.fenced.Store(false)
	x.restoring.Store(false)
	x.degraded.Store(true)
	x.m.repair(cause, false)
	x.publishStateLocked()
}
