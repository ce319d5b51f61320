package replication

// The ordered pipeline to the app.
//
// An executor does not wait for each entry's response before it writes the
// next entry: it writes a run of consecutive committed entries to one app
// connection and then reads their responses, matched in order. The rule
// that keeps every replica's app seeing exactly the log order:
//
//  1. At any moment at most one app connection has requests of the log
//     outstanding (written, response not read yet). Before an entry goes to
//     another connection, every response of the current one is read
//     ("drained").
//  2. Sessions without connection state share one pipelined connection per
//     port. A session's first request whose command the one command table
//     (replication/rediscmd) flags as changing, ending or resetting the
//     connection (SELECT, AUTH, HELLO, MULTI/EXEC, WATCH, CLIENT SETNAME,
//     QUIT, RESET ...) moves the session to a connection of its own, for
//     good: such a command never reaches a shared connection.
//  3. Everything that looks at or changes the app outside a request (an
//     audit capture, a snapshot, closing a session's own connection) drains
//     first.
//
// Proof sketch. The app executes the requests of one connection strictly in
// the order they arrive (Redis; an HTTP/1.1 server answering pipelined
// requests). By (1), when a request is written to a connection, every
// earlier entry's request has either been written to the same connection
// before it, or its response was read, so the app executed it already.
// Hence the app executes requests in log order, on every replica. By (2) a
// shared connection is in the state of a fresh connection whenever a
// request is written to it (no request on it changed its state), which is
// the state a session without connection-state commands has on every
// replica; a session with state has its own connection, which holds exactly
// its state. Responses are matched in order on each connection, so every
// entry gets its own response.
//
// An entry written to the pipeline is not applied yet: the applied
// watermark that local reads wait for moves only after its response was
// read (a read sees every write acknowledged before it). A crash with k
// entries in flight leaves the progress record saying "in flight" at the
// first of them (OnRequestSending is called before a run's first write), so
// the restart repairs the app instead of guessing which of the k ran. A
// connection that fails with requests outstanding gives their entries an
// error reply; when the failure is this replica's own (a timeout, a live
// app that closed the connection), the replica is uncertain and repaired.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// Bounds on one run: past them the run is drained before the next write,
// so the app's unread responses never fill the socket buffers while the
// executor still writes (an HTTP server stops reading requests then).
const (
	maxRunEntries = 128
	maxRunBytes   = 64 << 10
)

// sharedIdleCheck: a shared connection idle for longer is checked for a
// close by the app (Redis' idle timeout) before a run uses it, so no entry
// is written to a connection the app already closed.
const sharedIdleCheck = time.Second

// appConn is one connection to the app: a session's own, or a shared one.
type appConn struct {
	framer framing.Framer
	conn   net.Conn
	r      *bufio.Reader
	port   int
	shared bool
	// use serializes users of conn: the executor holds it from a run's
	// first write until the run is drained, a local read for its round trip.
	use  sync.Mutex
	dead error // the app closed or failed this connection (guarded by use)
	// idleSince is when the last run on a shared connection was drained.
	idleSince time.Time
}

func newAppConn(conn net.Conn, f framing.Framer, port int, shared bool) *appConn {
	return &appConn{framer: f, conn: conn, r: bufio.NewReaderSize(conn, 16<<10), port: port, shared: shared,
		idleSince: time.Now()}
}

func (c *appConn) close() {
	if c.conn != nil {
		_ = c.conn.Close()
	}
}

// closedByApp says whether an idle connection was closed by the app (EOF
// or reset waiting to be read). Called with use held and nothing in flight.
func (c *appConn) closedByApp() bool {
	if c.r.Buffered() > 0 {
		return true // bytes nobody asked for: the stream is not ours any more
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(-time.Second))
	_, err := c.r.Peek(1)
	_ = c.conn.SetReadDeadline(time.Time{})
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// inflight is one entry written to the current run's connection.
type inflight struct {
	slot int // position in the batch (or -1 for a replayed queued entry)
	e    raftcore.Entry
	op   Op
	req  framing.Request
	sess *appSession
	sent time.Time
}

// pipeRun is the connection with outstanding requests, if any.
type pipeRun struct {
	c     *appConn
	out   []inflight
	bufs  net.Buffers
	bytes int
	// written: the run's requests were handed to the connection.
	written bool
	// local: a local read's round trip (not a run of the log; no metrics).
	local bool
	// done receives each drained entry's response, in order.
	done func(f inflight, val []byte)
}

// sharesConn says whether a request of session s may go on the shared
// connection: the session has no connection of its own and the command
// changes nothing of the connection (the command table's flags).
func (x *Executor) sharesConn(s *appSession, op Op) bool {
	if s.own != nil || x.cfg.SerialApply {
		return false
	}
	switch s.framer.Protocol() {
	case framing.ProtoRESP:
		c, ok := rediscmd.LookupDisplay(op.Name)
		return ok && !c.Has(rediscmd.ConnState) && !c.Has(rediscmd.EndsConn) && !c.Has(rediscmd.ResetsConn) &&
			!c.Has(rediscmd.Blocking)
	case framing.ProtoHTTP:
		return x.cfg.HTTPPipelining
	}
	return false
}

// connForLocked returns the connection entry e of session s goes to,
// dialing it if needed; down means the app could not be reached.
func (x *Executor) connForLocked(s *appSession, op Op) (c *appConn, down bool) {
	if s.own != nil {
		return s.own, false
	}
	if x.sharesConn(s, op) {
		return x.sharedConnLocked(s.port, s.framer.Protocol())
	}
	conn, err := x.dialLocked(s.port)
	if err != nil {
		return nil, true
	}
	f, _ := framing.New(s.framer.Protocol(), x.cfg.Framing)
	x.smu.Lock()
	s.own = newAppConn(conn, f, s.port, false)
	x.smu.Unlock()
	return s.own, false
}

// sharedConnLocked returns the port's shared connection, replacing one the
// app closed meanwhile. It is only called with no run outstanding on it.
func (x *Executor) sharedConnLocked(port int, proto string) (*appConn, bool) {
	if c := x.shared[port]; c != nil {
		if c.dead == nil && (time.Since(c.idleSince) < sharedIdleCheck || !c.closedByApp()) {
			return c, false
		}
		c.close()
		delete(x.shared, port)
	}
	conn, err := x.dialLocked(port)
	if err != nil {
		return nil, true
	}
	f, _ := framing.New(proto, x.cfg.Framing)
	c := newAppConn(conn, f, port, true)
	x.shared[port] = c
	return c, false
}

// dialLocked dials the app on port.
func (x *Executor) dialLocked(port int) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), x.cfg.DialTimeout)
	conn, err := x.cfg.Dialer.DialApp(ctx, port)
	cancel()
	if err != nil {
		x.logUnreachableLocked(port, err)
		return nil, err
	}
	x.unreachable = unreachableLog{}
	return conn, nil
}

// closeSharedLocked closes the shared connections (a repair or restore
// changes the app under them; the next run dials fresh ones).
func (x *Executor) closeSharedLocked() {
	for port, c := range x.shared {
		c.close()
		delete(x.shared, port)
	}
}

// sendLocked writes f's request into the run on connection c, draining the
// run first when it is on another connection or full.
func (x *Executor) sendLocked(run *pipeRun, c *appConn, f inflight) {
	if run.c != c || len(run.out) >= maxRunEntries || (len(run.out) > 0 && run.bytes+len(f.req.Raw) > maxRunBytes) {
		x.drainLocked(run)
	}
	if run.c == nil {
		c.use.Lock()
		run.c = c
		if x.sending != nil {
			// Before the run's first byte reaches the app: a crash from
			// here on leaves this entry recorded as in flight.
			x.sending(f.e)
		}
	}
	f.sent = time.Now()
	run.out = append(run.out, f)
	run.bufs = append(run.bufs, f.req.Raw)
	run.bytes += len(f.req.Raw)
}

// drainLocked writes the run's requests and reads every response, in order.
func (x *Executor) drainLocked(run *pipeRun) {
	c := run.c
	if c == nil {
		return
	}
	out := run.out
	defer func() {
		run.c, run.out, run.bufs, run.bytes, run.written = nil, run.out[:0], run.bufs[:0], 0, false
		c.idleSince = time.Now()
		c.use.Unlock()
	}()
	if c.dead != nil {
		for _, f := range out {
			reply, _ := c.framer.ErrorReply(fmt.Errorf("%w: %v", framing.ErrUnavailable, c.dead))
			run.done(f, reply)
		}
		return
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(x.cfg.AppTimeout))
	bufs := run.bufs
	run.written = true
	_, werr := bufs.WriteTo(c.conn)
	for k, f := range out {
		resp, err := x.readResponse(c, f.req)
		if err == nil && werr != nil && k == len(out)-1 {
			err = werr
		}
		if err == nil {
			if !c.shared && endsConn(c.framer.Protocol(), f.req) {
				// The app closes it now, on every replica alike: a later
				// request must not take that close for this replica's own.
				c.dead = fmt.Errorf("the app closed the connection after %s", f.req.Op)
				c.close()
			}
			run.done(f, resp)
			continue
		}
		x.connFailedLocked(c, f, err, resp, run, out[k+1:])
		return
	}
	if !run.local {
		x.m.pipelineRun(len(out))
		if x.answered != nil {
			x.answered(out[len(out)-1].e)
		}
	}
}

// readResponse reads one response on c, bounded by AppTimeout.
func (x *Executor) readResponse(c *appConn, req framing.Request) (resp []byte, err error) {
	// A panic reading the app's response fails only this connection.
	defer func() {
		if p := recover(); p != nil {
			err = panicked(x.cfg.Log, x.m, x.cfg.Group, panicPathAppResponse, p)
		}
	}()
	_ = c.conn.SetReadDeadline(time.Now().Add(x.cfg.AppTimeout))
	resp, err = c.framer.ReadResponse(c.r, req)
	if err != nil {
		return resp, fmt.Errorf("read app response to %s: %w", req.Op, err)
	}
	return resp, nil
}

// connFailedLocked handles a failed read of f's response on c: the
// connection's position in the stream is unknown now, so it closes; f and
// the entries after it on the run get an error reply. A failure that is
// this replica's own makes its app uncertain (see roundTrip).
func (x *Executor) connFailedLocked(c *appConn, f inflight, err error, resp []byte, run *pipeRun, rest []inflight) {
	c.dead = err
	c.close()
	if c.shared {
		delete(x.shared, c.port)
	}
	if len(resp) > 0 && !errors.Is(err, framing.ErrMalformed) && !errors.Is(err, framing.ErrTooLarge) {
		run.done(f, resp) // e.g. a close-delimited HTTP body that ended at EOF
	} else {
		x.cfg.Log.Warn("app connection failed", "group", x.cfg.Group, "op", f.req.Op, "shared", c.shared,
			"in_flight_after", len(rest), "err", err)
		reply, _ := c.framer.ErrorReply(fmt.Errorf("%w: %v", framing.ErrUnavailable, err))
		run.done(f, reply)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || x.closedByLiveApp(c, f.req) {
		x.uncertainLocked(Cause{Kind: CauseSessionBroken, Detail: fmt.Sprintf("%s: %v", f.req.Op, err)})
	}
	for _, g := range rest {
		reply, _ := c.framer.ErrorReply(fmt.Errorf("%w: the app connection failed at an earlier pipelined request (%s at index %d): %v",
			framing.ErrUnavailable, f.req.Op, f.e.Index, err))
		run.done(g, reply)
	}
}
