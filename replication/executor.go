package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/internal/watermark"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/appstate"
	"github.com/smr-io/smr-cri/replication/connstate"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// Orderer is what the replication layer needs from the ordering layer;
// *raftcore.Group satisfies it.
type Orderer interface {
	Propose(ctx context.Context, p raftcore.Proposal) (raftcore.Result, error)
	ReadIndex(ctx context.Context) (uint64, error)
}

var _ Orderer = (*raftcore.Group)(nil)

// AppDialer opens a connection to the unmodified app on this replica (inside
// the pod's network namespace, 127.0.0.1:port).
type AppDialer interface {
	DialApp(ctx context.Context, port int) (net.Conn, error)
}

// TCPDialer dials Host:port in the current network namespace.
type TCPDialer struct {
	Host string // default 127.0.0.1
}

// DialApp implements AppDialer.
func (d TCPDialer) DialApp(ctx context.Context, port int) (net.Conn, error) {
	host := d.Host
	if host == "" {
		host = "127.0.0.1"
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
}

// ExecutorConfig configures one group's executor on one replica.
type ExecutorConfig struct {
	Group string
	Self  uint64 // this replica's member ID
	// Ports the sessions may open (from the pod contract).
	Ports   []Port
	Framing framing.Options
	Dialer  AppDialer
	// AppTimeout bounds one request/response round trip with the app
	// (default 30s). A request that exceeds it ends that session here.
	AppTimeout time.Duration
	// DialTimeout bounds one dial of the app (default 2s).
	DialTimeout time.Duration
	// AppWait is how long Apply waits for an unreachable app before it
	// answers "queued" and keeps ordering (default 30s).
	AppWait time.Duration
	// MaxQueue bounds the entries held while the app is unreachable (default
	// 10000). Beyond it this replica can no longer follow the log: it fails
	// every request until it is restarted and rebuilt from the log.
	MaxQueue int
	// RetryInterval is the pause between dials of an unreachable app (default 100ms).
	RetryInterval time.Duration
	// Trace receives one line per applied entry and per local read (nil: none).
	Trace *Tracer
	// Log receives warnings (app unreachable, replica diverged); nil discards.
	Log     *slog.Logger
	Metrics *Metrics
	// Audit tunes the ordered audit of the group's app states (audit.go).
	Audit AuditConfig
	// SerialApply turns the ordered pipeline off (pipeline.go): one app
	// round trip per entry, each session on its own app connection, as
	// before the pipeline (for A/B measurements and as a fallback).
	SerialApply bool
	// HTTPPipelining declares that the app answers pipelined HTTP/1.1
	// requests in order (pod annotation smr.io/http-pipelining): HTTP
	// sessions then share the pipelined connection like RESP ones.
	HTTPPipelining bool
}

func (c ExecutorConfig) withDefaults() (ExecutorConfig, error) {
	if c.Group == "" || c.Self == 0 || len(c.Ports) == 0 || c.Dialer == nil {
		return c, errors.New("replication: executor needs Group, Self, Ports and Dialer")
	}
	if c.AppTimeout <= 0 {
		c.AppTimeout = 30 * time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 2 * time.Second
	}
	if c.AppWait <= 0 {
		c.AppWait = 30 * time.Second
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = 10000
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = 100 * time.Millisecond
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Executor applies one group's committed entries to the local app, strictly
// in log order: it implements raftcore.StateMachine and BatchStateMachine.
// Runs of entries are pipelined to the app (pipeline.go: the rule that keeps
// the app's order the log's): sessions without connection state share one
// connection per port, a session with state has its own.
//
// With EnableSnapshots (snapshot.go) it is a raftcore.StreamSnapshotter:
// the app's state is captured and restored through its own protocol
// (replication/appstate), so the log is compacted; without it the group
// keeps its whole log and a fresh app replays it from the start.
type Executor struct {
	cfg ExecutorConfig
	m   *groupMetrics

	// mu is the serial executor: it is held while a batch of log entries
	// is written to the app and answered, so the app sees the log's order.
	mu sync.Mutex
	// shared holds the pipelined connection of each port and connection
	// state that sessions in that state share (under mu).
	shared map[shareKey]*appConn
	// shareUsers counts the open sessions in each shareable state (mu).
	shareUsers map[shareKey]int
	// reads serve local reads of those sessions, pipelined (readpipe.go).
	reads *readPipes
	// smu guards sessions. It is held only briefly (never during an app
	// round trip), so local reads find their session without waiting for
	// the write being applied; changes happen under mu as well.
	smu      sync.RWMutex
	sessions map[uint64]*appSession
	// degraded mirrors broken != nil || len(queue) > 0 for local reads,
	// which do not take mu.
	degraded atomic.Bool
	queue    []*queued // entries waiting for an unreachable app, in log order
	downMode bool      // AppWait expired: queue without waiting until drained
	retrying bool
	broken   error // the queue overflowed; this replica diverged

	applied watermark.Mark

	startsMu sync.Mutex
	starts   map[[2]uint64]time.Time // (session, seq) -> propose time, origin only

	closed    chan struct{}
	closeOnce sync.Once

	// sending, if set, is called under mu just before the first bytes of a
	// pipeline run are handed to the app (see OnRequestSending); answered
	// after the run's responses were all read (OnAnswered).
	sending  func(raftcore.Entry)
	answered func(raftcore.Entry)
	// restoring is set while RestoreApp brings the app to a known state, and
	// from Fence until then; fenced keeps entries from the app. Both are
	// atomics so Fence never waits for mu: a kubelet call (CreateContainer)
	// fences, and mu may be held by a snapshot restore that waits for that
	// very container's app.
	restoring atomic.Bool
	fenced    atomic.Bool
	// unreachable rate-limits the "app unreachable" warning (under mu).
	unreachable unreachableLog
	// uncertain is the OnUncertain hook.
	uncertain atomic.Pointer[func(Cause)]

	// conns is the connection state of every open session as the log
	// defines it (sessions.go): what a new app connection of a session must
	// be sent to be where the other replicas' connections are. Guarded by
	// cmu, and changed only by the apply path.
	cmu   sync.Mutex
	conns *connstate.Tracker
	// connsFloor is the index of the snapshot conns was restored from:
	// entries up to it are in it already (a restart that restored a
	// snapshot may still skip entries up to its resume point).
	connsFloor uint64
	// ending holds the sessions this replica proposed an END for and
	// whose END is not applied yet (guarded by cmu).
	ending map[uint64]bool
	// creds authenticate a rebuilt session's connection as the user its
	// client authenticated as (EnableSnapshots; set before the group runs).
	creds appstate.Credentials

	// lastState is the state as of its last change, for readers that must
	// not wait for mu (readiness.go).
	lastState atomic.Pointer[executorState]
	// snap captures and restores the app's state (snapshot.go); nil: none.
	snap *appSnapshots
	// audit is the ordered audit's state (audit.go).
	audit *auditor
}

type appSession struct {
	origin uint64
	port   int
	framer framing.Framer
	// own is the session's own app connection, nil while it uses the
	// shared connection of its state (pipeline.go).
	own *appConn
	// share is the session's connection state when other sessions in the
	// same state may share a connection with it (nil: they may not: a
	// transaction, a WATCH, or no pipeline). Set under mu and smu.
	share *shareState
	// lost: its connection state could not be rebuilt on this replica
	// (sessions.go); an END for it is on its way, and any request of it
	// applied before that makes this replica's app uncertain. own is nil.
	lost error
}

type queued struct {
	e    raftcore.Entry
	op   Op
	done chan []byte
}

// ErrNotReady reports that the local app cannot serve (unreachable or
// diverged); it wraps framing.ErrUnavailable.
var ErrNotReady = fmt.Errorf("%w: app on this replica is not ready", framing.ErrUnavailable)

// NewExecutor returns an executor; wire it as the group's StateMachine.
func NewExecutor(cfg ExecutorConfig) (*Executor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	x := &Executor{
		cfg: cfg, m: cfg.Metrics.forGroup(cfg.Group), sessions: map[uint64]*appSession{},
		starts: map[[2]uint64]time.Time{}, closed: make(chan struct{}), audit: newAuditor(cfg.Audit),
		conns: connstate.New(), ending: map[uint64]bool{}, shared: map[shareKey]*appConn{}, shareUsers: map[shareKey]int{},
	}
	x.reads = newReadPipes(x)
	x.m.setState(StateServing)
	x.m.initDiverged(cfg.Self)
	return x, nil
}

// OnRequestSending registers f to be called, under the serial executor's
// lock, just before the first request of a pipeline run is written to the
// app: from that moment until the run is answered (OnAnswered) the app may
// have executed any prefix of the run. The member records the entry as in
// flight there, so a restart repairs the app instead of guessing. Set it
// before the first Apply; local reads do not call it.
func (x *Executor) OnRequestSending(f func(raftcore.Entry)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.sending = f
}

// OnAnswered registers f to be called, under the serial executor's lock,
// when the app answered every request of a run up to and including e.
func (x *Executor) OnAnswered(f func(raftcore.Entry)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.answered = f
}

// Apply implements raftcore.StateMachine: ApplyBatch of one entry.
func (x *Executor) Apply(e raftcore.Entry) ([]byte, error) {
	r := x.ApplyBatch([]raftcore.Entry{e})
	return r[0].Value, r[0].Err
}

// ApplyBatch implements raftcore.BatchStateMachine. Client-level failures
// (app closed the connection, unknown session) are returned as protocol
// error replies in the value, so they reach the client and never stop the
// group. The batch's requests are pipelined to the app (pipeline.go).
func (x *Executor) ApplyBatch(es []raftcore.Entry) []raftcore.ApplyResult {
	b := &applyBatch{entries: es, out: make([]raftcore.ApplyResult, len(es)), ops: make([]Op, len(es)),
		starts: make([]time.Time, len(es)), queued: make([]*queued, len(es))}
	b.run.done = func(f inflight, val []byte) { b.out[f.slot].Value = val }
	n := x.applyLocked(b)
	// Entries up to the first queued one are answered: applied now.
	x.finish(b, 0, n)
	for i := n; i < len(es); i++ {
		if q := b.queued[i]; q != nil {
			b.out[i].Value = x.waitQueued(q, es[i], b.ops[i])
		}
		x.finish(b, i, i+1)
	}
	return b.out
}

// applyBatch is one ApplyBatch call's state.
type applyBatch struct {
	entries []raftcore.Entry
	out     []raftcore.ApplyResult
	ops     []Op
	starts  []time.Time
	queued  []*queued
	run     pipeRun
}

// applyLocked takes mu and runs the batch's entries through the pipeline,
// queueing them from the first one the app cannot take; it returns the
// number of entries before the first queued one. A panic leaves the
// entries from the one being handled on with an error reply, and the app
// uncertain (applyPanicked).
func (x *Executor) applyLocked(b *applyBatch) (n int) {
	i := 0
	defer func() {
		if p := recover(); p != nil {
			unanswered := x.abortRunLocked(&b.run)
			x.mu.Unlock()
			for _, f := range unanswered {
				b.out[f.slot] = raftcore.ApplyResult{Value: x.applyPanicked(f.e, p)}
			}
			for j := i; j < len(b.entries); j++ {
				b.out[j] = raftcore.ApplyResult{Value: x.applyPanicked(b.entries[j], p)}
				b.queued[j] = nil
			}
			n = len(b.entries)
		}
	}()
	x.mu.Lock()
	n = len(b.entries)
	for ; i < len(b.entries); i++ {
		e := b.entries[i]
		b.starts[i] = time.Now()
		op, err := DecodeOp(e.Data)
		if err != nil {
			b.out[i].Err = fmt.Errorf("group %s index %d: %w", x.cfg.Group, e.Index, err)
			continue
		}
		b.ops[i] = op
		switch op.Kind {
		case KindAudit, KindDigest:
			// Bookkeeping of the audit, at the exact log position: never
			// queued behind an unreachable app (an AUDIT then reports that
			// this replica is not serving).
			x.drainLocked(&b.run)
			x.applyAuditLocked(e, op)
			continue
		case KindRequest:
			x.audit.writes.Add(1)
		}
		var q *queued
		b.out[i].Value, q = x.applyOrQueueLocked(&b.run, i, e, op)
		if q != nil {
			b.queued[i] = q
			n = min(n, i)
		}
	}
	x.drainLocked(&b.run)
	x.mu.Unlock()
	return n
}

// abortRunLocked ends a run that a panic interrupted and returns its
// entries, which got no answer. A connection the run was written to is at
// an unknown position in the stream, so it closes; one that got nothing
// yet stays usable.
func (x *Executor) abortRunLocked(run *pipeRun) []inflight {
	c, out := run.c, run.out
	if c == nil {
		return nil
	}
	if run.written {
		c.dead = fmt.Errorf("%w: the run on this connection was interrupted", ErrPanic)
		c.close()
		if c.shared {
			delete(x.shared, shareKey{c.port, c.key})
		}
	}
	c.use.Unlock()
	*run = pipeRun{}
	return out
}

// finish advances the applied watermark past entries [from, to) and writes
// their trace lines and metrics, in log order.
func (x *Executor) finish(b *applyBatch, from, to int) {
	if from >= to {
		return
	}
	for i := from; i < to; i++ {
		x.observe(b.entries[i], b.ops[i], b.starts[i])
	}
	x.setApplied(b.entries[to-1].Index)
}

// applyOrQueueLocked sends the entry into the pipeline run, or queues it
// when the app is unreachable. A non-nil *queued means the caller should
// wait for the replay. A value returned now is the entry's reply (an error,
// or nothing); a pipelined request gets its reply when the run drains.
func (x *Executor) applyOrQueueLocked(run *pipeRun, slot int, e raftcore.Entry, op Op) ([]byte, *queued) {
	x.track(e, op)
	if x.broken != nil {
		return x.replyLocked(e, op, x.broken), nil
	}
	if x.fenced.Load() {
		return x.replyLocked(e, op, fmt.Errorf("%w: the app is being rebuilt", ErrNotReady)), nil
	}
	if len(x.queue) == 0 {
		val, down := x.execLocked(run, slot, e, op)
		if !down {
			return val, nil
		}
		// Entries before this one were sent: they come first.
		x.drainLocked(run)
	}
	if len(x.queue) >= x.cfg.MaxQueue {
		x.broken = fmt.Errorf("%w: it stayed unreachable for %d entries; restart the pod to rebuild it from the log",
			ErrNotReady, x.cfg.MaxQueue)
		x.cfg.Log.Error("replica diverged", "group", x.cfg.Group, "err", x.broken)
		x.uncertainLocked(Cause{Kind: CauseQueueOverflow, Detail: x.broken.Error()})
		x.queue = nil
		x.m.setQueue(0)
		x.degraded.Store(true)
		x.publishStateLocked()
		return x.replyLocked(e, op, x.broken), nil
	}
	q := &queued{e: e, op: op, done: make(chan []byte, 1)}
	x.queue = append(x.queue, q)
	x.m.setQueue(len(x.queue))
	x.degraded.Store(true)
	if len(x.queue) == 1 {
		x.publishStateLocked()
	}
	if !x.retrying {
		x.retrying = true
		go x.retryLoop()
	}
	if x.downMode {
		return x.replyLocked(e, op, fmt.Errorf("%w: request ordered at index %d and queued until the app is up", ErrNotReady, e.Index)), nil
	}
	return nil, q
}

// waitQueued waits up to AppWait for the replay of q; after that the
// replica stops waiting (downMode) so the log keeps flowing into the queue.
func (x *Executor) waitQueued(q *queued, e raftcore.Entry, op Op) []byte {
	t := time.NewTimer(x.cfg.AppWait)
	defer t.Stop()
	select {
	case val := <-q.done:
		return val
	case <-t.C:
	case <-x.closed:
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	select {
	case val := <-q.done:
		return val
	default:
	}
	x.downMode = true
	return x.replyLocked(e, op, fmt.Errorf("%w: request ordered at index %d and queued until the app is up", ErrNotReady, e.Index))
}

// retryLoop replays the queue once the app accepts connections again, one
// entry at a time (a run of one).
func (x *Executor) retryLoop() {
	t := time.NewTicker(x.cfg.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-x.closed:
			return
		case <-t.C:
		}
		x.mu.Lock()
		for len(x.queue) > 0 {
			q := x.queue[0]
			val, down := x.execNowLocked(q.e, q.op)
			if down {
				break
			}
			q.done <- val
			x.queue = x.queue[1:]
		}
		x.m.setQueue(len(x.queue))
		if len(x.queue) == 0 {
			x.degraded.Store(x.broken != nil)
			x.downMode, x.retrying = false, false
			x.publishStateLocked()
			x.mu.Unlock()
			return
		}
		x.mu.Unlock()
	}
}

// execNowLocked runs one entry against the app and waits for its answer.
func (x *Executor) execNowLocked(e raftcore.Entry, op Op) (val []byte, down bool) {
	run := pipeRun{done: func(_ inflight, v []byte) { val = v }}
	v, down := x.execLocked(&run, -1, e, op)
	x.drainLocked(&run)
	if v != nil { // answered at once (an error, an OPEN); a pipelined request's reply came from the drain
		val = v
	}
	return val, down
}

// execLocked runs one entry against the app: a REQUEST is written into the
// run (its reply comes when the run drains), anything else happens now.
// down=true means the app could not be reached at all (dial failed): the
// entry was not executed.
func (x *Executor) execLocked(run *pipeRun, slot int, e raftcore.Entry, op Op) (val []byte, down bool) {
	switch op.Kind {
	case KindOpen:
		if _, ok := x.session(e.Session); ok {
			return nil, false // already open (replayed OPEN)
		}
		if !slices.Contains(x.cfg.Ports, Port{Number: op.Port, Protocol: op.Protocol}) {
			return x.replyLocked(e, op, fmt.Errorf("%w: port %d/%s is not replicated by this group", framing.ErrUnsupported, op.Port, op.Protocol)), false
		}
		f, _ := framing.New(op.Protocol, x.cfg.Framing)
		s := &appSession{origin: e.Origin, port: op.Port, framer: f}
		if x.pipelines(op.Protocol) {
			x.setShareLocked(s, &shareState{}) // a fresh connection's state
		}
		if !x.pipelines(op.Protocol) {
			// A session that never shares (HTTP without pipelining, or no
			// pipeline at all) gets its connection at its OPEN, as before.
			conn, err := x.dialLocked(op.Port)
			if err != nil {
				return nil, true
			}
			s.own = newAppConn(conn, f, op.Port, false)
		}
		x.smu.Lock()
		x.sessions[e.Session] = s
		n := len(x.sessions)
		x.smu.Unlock()
		x.m.setSessions(n)
		return nil, false
	case KindRequest:
		s, ok := x.session(e.Session)
		if !ok {
			return x.replyLocked(e, op, x.noSessionErr(e.Session)), false
		}
		if s.lost == nil {
			c, down := x.connForLocked(run, s, op)
			if down {
				return nil, true
			}
			if c != nil {
				x.sendLocked(run, c, inflight{slot: slot, e: e, op: op, req: framing.Request{Raw: op.Raw, Op: op.Name}, sess: s})
				if changesConn(s.framer.Protocol(), op) {
					x.reshareLocked(s, e.Session) // the tracker has this entry already
				}
				if x.cfg.SerialApply {
					x.drainLocked(run)
				}
				return nil, false
			}
		}
		// Every other replica runs this request; this one cannot.
		x.uncertainLocked(Cause{Kind: CauseSessionLost, Detail: fmt.Sprintf("session %x: %v", e.Session, s.lost)})
		return x.replyLocked(e, op, fmt.Errorf("%w: %w", framing.ErrUnavailable, s.lost)), false
	case KindClose:
		if s, ok := x.session(e.Session); ok {
			x.drainIfUsedLocked(run, s)
		}
		x.closeSessionLocked(e.Session)
	case KindReset:
		x.drainLocked(run)
		for _, id := range x.sessionIDs(func(s *appSession) bool { return s.origin == e.Origin }) {
			x.closeSessionLocked(id)
		}
	case KindEnd:
		if op.End != nil {
			if s, ok := x.session(op.End.Session); ok {
				x.drainIfUsedLocked(run, s)
			}
		}
		x.endLocked(e, op.End)
	case KindAuthOK:
		if s, ok := x.session(e.Session); ok && s.lost == nil {
			x.reshareLocked(s, e.Session) // the AUTH is known to have succeeded now
		}
	}
	return nil, false
}

// readConn reads where a local read of s goes (it does not hold mu): its
// own connection, or the read pipe of its shareable state.
func (x *Executor) readConn(s *appSession) (*appConn, *shareState) {
	x.smu.RLock()
	defer x.smu.RUnlock()
	return s.own, s.share
}

// roundTrip writes one request to c and reads exactly one complete
// response (local reads on a session's own connection).
func (x *Executor) roundTrip(c *appConn, s *appSession, req framing.Request) []byte {
	var val []byte
	run := pipeRun{done: func(_ inflight, v []byte) { val = v }}
	run.c = c
	c.use.Lock()
	run.local = true
	run.add(inflight{slot: -1, req: req, sess: s, sent: time.Now()})
	x.drainLocked(&run)
	return val
}

// closedByLiveApp says whether a RESP app closed s's connection on its own
// while it still accepts connections (see roundTripLocked).
func (x *Executor) closedByLiveApp(c *appConn, req framing.Request) bool {
	if c.framer.Protocol() != framing.ProtoRESP || endsConn(c.framer.Protocol(), req) {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn, err := x.cfg.Dialer.DialApp(ctx, c.port)
	if err != nil {
		return false // the app is down
	}
	_ = conn.Close()
	return true
}

// endsConn: req is a Redis command after which the app closes the
// connection (QUIT; the command table's EndsConn).
func endsConn(proto string, req framing.Request) bool {
	if proto != framing.ProtoRESP {
		return false
	}
	c, ok := rediscmd.LookupDisplay(req.Op)
	return ok && c.Has(rediscmd.EndsConn)
}

func (x *Executor) closeSessionLocked(id uint64) {
	x.smu.Lock()
	s, ok := x.sessions[id]
	delete(x.sessions, id)
	n := len(x.sessions)
	x.smu.Unlock()
	if ok {
		if s.own != nil {
			s.own.close()
		}
		x.setShareLocked(s, nil)
		x.m.setSessions(n)
	}
}

func (x *Executor) session(id uint64) (*appSession, bool) {
	x.smu.RLock()
	defer x.smu.RUnlock()
	s, ok := x.sessions[id]
	return s, ok
}

// sessionIDs returns the IDs of the open sessions that match keep.
func (x *Executor) sessionIDs(keep func(*appSession) bool) []uint64 {
	x.smu.RLock()
	defer x.smu.RUnlock()
	var ids []uint64
	for id, s := range x.sessions {
		if keep(s) {
			ids = append(ids, id)
		}
	}
	return ids
}

// replyLocked renders err in the protocol of the entry's session (or of the
// OPEN), so the origin can hand it to its client.
func (x *Executor) replyLocked(e raftcore.Entry, op Op, err error) []byte {
	proto := op.Protocol
	if s, ok := x.session(e.Session); ok {
		proto = s.framer.Protocol()
	}
	if proto == "" {
		proto = x.cfg.Ports[0].Protocol
	}
	f, ferr := framing.New(proto, x.cfg.Framing)
	if ferr != nil {
		return nil
	}
	reply, _ := f.ErrorReply(err)
	return reply
}

// Read runs a read-only request on this replica: it waits until the entry at
// readIndex (from Orderer.ReadIndex) is answered by the app here (an entry
// written to the pipeline is not yet applied), then executes the request on
// the session's own app connection, or, for a session without connection
// state, on the port's pipelined read connection (readpipe.go), so it sees
// every write committed before the read started.
//
// Reads do not hold the serial executor's lock during the app round trip:
// they change no state, so reads of different sessions run side by side and
// beside the writes being applied (which are committed, so observing them is
// linearizable). A session's own connection is still used by one request
// at a time, and a read-only request never carries session state (the
// framer marks nothing read-only inside MULTI).
func (x *Executor) Read(ctx context.Context, session uint64, req framing.Request, readIndex uint64) ([]byte, error) {
	start := time.Now()
	if err := x.WaitApplied(ctx, readIndex); err != nil {
		return nil, err
	}
	if x.degraded.Load() {
		return nil, ErrNotReady
	}
	s, ok := x.session(session)
	if !ok {
		return nil, x.noSessionErr(session)
	}
	if s.lost != nil {
		return nil, fmt.Errorf("%w: %w", framing.ErrUnavailable, s.lost)
	}
	var val []byte
	if own, share := x.readConn(s); own != nil || share == nil {
		if own == nil {
			return nil, fmt.Errorf("%w: session %x has no app connection here", framing.ErrUnavailable, session)
		}
		val = x.roundTrip(own, s, req)
	} else {
		v, err := x.reads.do(ctx, s.port, s.framer.Protocol(), share, req)
		if err != nil {
			return nil, err
		}
		val = v
	}
	exec := time.Since(start)
	x.cfg.Trace.Write(TraceLine{Kind: "read", Group: x.cfg.Group, Index: readIndex, Session: session,
		Op: req.Op, Origin: x.cfg.Self, Latency: exec, Exec: exec})
	x.m.read()
	return val, nil
}

// WaitApplied blocks until the entry at idx is applied here.
func (x *Executor) WaitApplied(ctx context.Context, idx uint64) error {
	applied, err := x.applied.Wait(ctx, idx, x.closed)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, watermark.ErrStopped):
		return fmt.Errorf("wait for index %d: %w", idx, ErrNotReady)
	}
	return fmt.Errorf("wait for index %d (applied %d): %w", idx, applied, err)
}

// Applied returns the last applied index.
func (x *Executor) Applied() uint64 {
	return x.applied.Load()
}

func (x *Executor) setApplied(idx uint64) {
	x.applied.Advance(idx)
	x.m.setApplied(idx)
}

// Health returns nil while the replica follows the log, ErrNotReady (wrapped)
// while entries wait for the app or after the queue overflowed.
func (x *Executor) Health() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.broken != nil {
		return x.broken
	}
	if x.fenced.Load() {
		return fmt.Errorf("%w: the app is being rebuilt", ErrNotReady)
	}
	if len(x.queue) > 0 {
		return fmt.Errorf("%w: %d entries wait for the app", ErrNotReady, len(x.queue))
	}
	return nil
}

// Sessions returns the number of open app sessions.
func (x *Executor) Sessions() int {
	x.smu.RLock()
	defer x.smu.RUnlock()
	return len(x.sessions)
}

// Close ends every app connection and the retry loop.
func (x *Executor) Close() error {
	x.stopWaiting()
	x.reads.close()
	x.mu.Lock()
	defer x.mu.Unlock()
	x.closeAllConnsLocked()
	return nil
}

// closeAllConnsLocked closes every session and the shared and read
// connections: the app under them is about to change (a repair, a
// restore) or the executor closes.
func (x *Executor) closeAllConnsLocked() {
	for _, id := range x.sessionIDs(func(*appSession) bool { return true }) {
		x.closeSessionLocked(id)
	}
	x.closeSharedLocked()
	x.reads.reset()
}

// unreachableLog counts failed dials to the app since the last warning.
type unreachableLog struct {
	last     time.Time
	failures int
}

// unreachableLogEvery bounds the "app unreachable" warnings: the queue is
// retried every RetryInterval, and an app that stays away (a container
// still starting, a sandbox already gone) would log ten lines a second.
const unreachableLogEvery = 10 * time.Second

func (x *Executor) logUnreachableLocked(port int, err error) {
	x.unreachable.failures++
	if time.Since(x.unreachable.last) < unreachableLogEvery {
		return
	}
	x.cfg.Log.Warn("app unreachable", "group", x.cfg.Group, "port", port, "failed_dials", x.unreachable.failures, "err", err)
	x.unreachable = unreachableLog{last: time.Now()}
}

// stopWaiting ends every wait for the app (restore, repair, queue retry)
// without touching the sessions; Close follows.
func (x *Executor) stopWaiting() { x.closeOnce.Do(func() { close(x.closed) }) }

// markStart records when this replica proposed (session, seq), so the trace
// line of the entry can report the ordering latency seen by the client.
func (x *Executor) markStart(session, seq uint64, t time.Time) {
	x.startsMu.Lock()
	x.starts[[2]uint64{session, seq}] = t
	x.startsMu.Unlock()
}

func (x *Executor) takeStart(session, seq uint64) (time.Time, bool) {
	x.startsMu.Lock()
	defer x.startsMu.Unlock()
	k := [2]uint64{session, seq}
	t, ok := x.starts[k]
	delete(x.starts, k)
	return t, ok
}

// observe writes the trace line and metrics of one applied entry. latency is
// propose-to-applied on the origin replica, and the app round trip elsewhere.
func (x *Executor) observe(e raftcore.Entry, op Op, execStart time.Time) {
	now := time.Now()
	exec := now.Sub(execStart)
	latency := exec
	if e.Origin == x.cfg.Self {
		if t, ok := x.takeStart(e.Session, e.Seq); ok {
			latency = now.Sub(t)
			x.m.lag(latency)
		}
	}
	name := op.Name
	if op.Kind != KindRequest {
		name = op.Kind.String()
	}
	x.m.commit(op.Kind, exec)
	x.cfg.Trace.Write(TraceLine{Kind: "commit", Group: e.Group, Index: e.Index, Term: e.Term,
		Session: e.Session, Seq: e.Seq, Op: name, Origin: e.Origin, Latency: latency, Exec: exec})
}
