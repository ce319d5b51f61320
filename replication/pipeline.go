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
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/connstate"
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
	key    string // the connection state of a shared connection
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

// closedWhileIdle says whether the app closed an idle connection (EOF or
// reset waiting to be read), or sent bytes nobody asked for: either way the
// stream is not ours any more. Only with nothing in flight on it.
func closedWhileIdle(r *bufio.Reader, conn net.Conn) bool {
	return r.Buffered() > 0 || peerClosed(conn)
}

// peerClosed says whether the app closed (or wrote to) an idle connection:
// a non-blocking peek at the socket (MSG_PEEK|MSG_DONTWAIT). No read
// deadline: a short one can expire before the read runs on a loaded
// machine, and a past one fails before Go looks at the socket.
func peerClosed(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false // not a socket (a test's pipe): nothing to peek at
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	var buf [1]byte
	closed := false
	if err := rc.Read(func(fd uintptr) bool {
		_, _, rerr := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		// EAGAIN: nothing pending, alive. Anything else (0 bytes: EOF;
		// bytes; another error): the stream is not ours any more.
		closed = !errors.Is(rerr, unix.EAGAIN)
		return true
	}); err != nil {
		return true
	}
	return closed
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

// add appends f's request to the run (written at its drain).
func (r *pipeRun) add(f inflight) {
	r.out = append(r.out, f)
	r.bufs = append(r.bufs, f.req.Raw)
	r.bytes += len(f.req.Raw)
}

// shareKey names a shared connection: a port and a connection state
// (connstate.Session.Shareable's key; "" is a fresh connection's).
type shareKey struct {
	port  int
	state string
}

// changesConn: the request changes, ends or resets its connection (the
// command table's flags; for HTTP, a request after which the app closes the
// connection), so it runs on the session's own connection.
func changesConn(proto string, op Op) bool {
	if proto == framing.ProtoHTTP {
		return framing.EndsHTTPConnection(op.Raw)
	}
	if proto != framing.ProtoRESP {
		return false
	}
	c, ok := rediscmd.LookupDisplay(op.Name)
	return !ok || c.Has(rediscmd.ConnState) || c.Has(rediscmd.EndsConn) || c.Has(rediscmd.ResetsConn) || c.Has(rediscmd.Blocking)
}

// pipelines says whether sessions of proto may share connections at all.
func (x *Executor) pipelines(proto string) bool {
	return !x.cfg.SerialApply && (proto == framing.ProtoRESP || x.cfg.HTTPPipelining)
}

// connForLocked returns the connection a request of session s goes to,
// dialing it if needed (down: the app could not be reached; nil: the
// session's state could not be rebuilt on a new connection, s.lost says
// why). A session in a
// shareable state uses the shared connection of that state; a request that
// changes the connection, and every request of a session whose state cannot
// be shared (a transaction, a WATCH, an AUTH not confirmed yet), use the
// session's own connection, created in the session's state.
func (x *Executor) connForLocked(run *pipeRun, s *appSession, op Op) (c *appConn, down bool) {
	proto := s.framer.Protocol()
	if x.pipelines(proto) && s.share != nil && !changesConn(proto, op) {
		if s.own != nil && !x.retireOwnLocked(run, s) {
			return s.own, false
		}
		return x.sharedConnLocked(run, s)
	}
	if s.own != nil {
		return s.own, false
	}
	conn, err := x.dialLocked(s.port)
	if err != nil {
		return nil, true
	}
	var reqs []connstate.Request
	if s.share != nil {
		reqs = s.share.reqs
	}
	own, err := x.connInState(conn, proto, s.port, false, reqs)
	if err != nil {
		x.loseSessionLocked(s, err)
		return nil, false
	}
	x.smu.Lock()
	s.own = own
	x.smu.Unlock()
	return own, false
}

// retireOwnLocked ends s's own connection now that the session's state can
// be shared again (after EXEC, or after the HELLO a client library sends
// first): it becomes the shared connection of that state when there is
// none (its state is exactly that one), else it closes. It keeps the own
// connection (false) when a shared one of that state could not be rebuilt
// later without a credential smr-cri lacks.
func (x *Executor) retireOwnLocked(run *pipeRun, s *appSession) bool {
	own := s.own
	k := shareKey{s.port, s.share.key}
	if own.dead != nil || (s.share.needsCred && x.creds.Password == "") {
		return false
	}
	if _, ok := x.shared[k]; !ok {
		own.shared, own.key = true, k.state
		x.shared[k] = own
	} else {
		if run.c == own {
			x.drainLocked(run)
		}
		own.use.Lock()
		own.dead = errors.New("the session's connection state is shared now")
		own.close()
		own.use.Unlock()
	}
	x.smu.Lock()
	s.own = nil
	x.smu.Unlock()
	return true
}

// sharedConnLocked returns the shared connection of s's state, replacing
// one the app closed meanwhile, or creating it in that state.
func (x *Executor) sharedConnLocked(run *pipeRun, s *appSession) (*appConn, bool) {
	k := shareKey{s.port, s.share.key}
	if c := x.shared[k]; c != nil {
		if run.c == c || c.dead == nil && (time.Since(c.idleSince) < sharedIdleCheck || !closedWhileIdle(c.r, c.conn)) {
			return c, false
		}
		c.close()
		delete(x.shared, k)
	}
	conn, err := x.dialLocked(s.port)
	if err != nil {
		return nil, true
	}
	c, err := x.connInState(conn, s.framer.Protocol(), s.port, true, s.share.reqs)
	if err != nil {
		x.loseSessionLocked(s, err)
		return nil, false
	}
	c.key = k.state
	x.shared[k] = c
	return c, false
}

// reshareLocked reads session id's connection state from the tracker after
// an entry that may have changed it.
func (x *Executor) reshareLocked(s *appSession, id uint64) {
	if !x.pipelines(s.framer.Protocol()) {
		return
	}
	x.cmu.Lock()
	ts, ok := x.conns.Session(id)
	var sh *shareState
	if ok {
		if key, reqs, ok := ts.Shareable(); ok {
			sh = &shareState{key: key, reqs: reqs, needsCred: slices.ContainsFunc(reqs, func(r connstate.Request) bool { return r.AuthUser != "" })}
		}
	}
	x.cmu.Unlock()
	x.setShareLocked(s, sh)
}

// setShareLocked sets s's shareable state and counts the sessions of each
// state: a shared connection (and read pipe) whose state no open session
// has any more closes, so distinct states (client names, databases) do not
// pile up connections in the app.
func (x *Executor) setShareLocked(s *appSession, sh *shareState) {
	x.smu.Lock()
	old := s.share
	s.share = sh
	x.smu.Unlock()
	if sh != nil {
		x.shareUsers[shareKey{s.port, sh.key}]++
	}
	if old == nil {
		return
	}
	k := shareKey{s.port, old.key}
	if x.shareUsers[k]--; x.shareUsers[k] > 0 {
		return
	}
	delete(x.shareUsers, k)
	if c := x.shared[k]; c != nil {
		// The caller drained any run on it (drainIfUsedLocked).
		c.close()
		delete(x.shared, k)
	}
	x.reads.drop(k)
}

// drainIfUsedLocked drains the run when it is on a connection session s
// uses, which may close now (its CLOSE or END).
func (x *Executor) drainIfUsedLocked(run *pipeRun, s *appSession) {
	c := run.c
	if c != nil && (c == s.own || (s.share != nil && c.shared && c.port == s.port && c.key == s.share.key)) {
		x.drainLocked(run)
	}
}

// shareState is a session's shareable connection state.
type shareState struct {
	key  string
	reqs []connstate.Request // bring a fresh connection to it
	// needsCred: rebuilding it authenticates with smr-cri's credential.
	needsCred bool
}

// connInState wraps a newly dialed app connection and brings it to the
// connection state reqs (replayOn); on failure the connection is closed.
func (x *Executor) connInState(conn net.Conn, proto string, port int, shared bool, reqs []connstate.Request) (*appConn, error) {
	f, err := framing.New(proto, x.cfg.Framing)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	c := newAppConn(conn, f, port, shared)
	if err := x.replayOn(c, reqs); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// replayOn sends the requests that rebuild a connection state on c (a new
// connection). Their replies are the app's (a recorded command that failed
// when the client sent it fails again, which is what keeps the state
// equal); only a failed round trip, or an AUTH that fails with smr-cri's
// credential, fails the replay.
func (x *Executor) replayOn(c *appConn, reqs []connstate.Request) error {
	for _, r := range reqs {
		if r.AuthUser != "" {
			raw, err := x.authRequest(r.AuthUser)
			if err != nil {
				return err
			}
			r.Raw = raw
		}
		req := framing.Request{Raw: r.Raw, Op: r.Op}
		_ = c.conn.SetDeadline(time.Now().Add(x.cfg.AppTimeout))
		if _, err := c.conn.Write(req.Raw); err != nil {
			return fmt.Errorf("%s: write: %w", r.Op, err)
		}
		resp, err := c.framer.ReadResponse(c.r, req)
		if err != nil {
			return fmt.Errorf("%s: read reply: %w", r.Op, err)
		}
		if r.AuthUser != "" && (len(resp) == 0 || resp[0] == '-') {
			// The client's AUTH succeeded; this one must too.
			return fmt.Errorf("AUTH as %q with smr-cri's credential (%s) failed: %s", r.AuthUser,
				x.creds.Source, strings.TrimSpace(string(resp)))
		}
	}
	_ = c.conn.SetDeadline(time.Time{})
	return nil
}

// loseSessionLocked: session s's connection state cannot be rebuilt here;
// it is ended on every replica (an END entry), and until then its requests
// make this replica's app uncertain.
func (x *Executor) loseSessionLocked(s *appSession, err error) {
	s.lost = fmt.Errorf("%w: replaying it on this replica failed: %w", connstate.ErrNotRebuildable, err)
	id, ok := x.sessionID(s)
	x.cfg.Log.Warn("session's connection state cannot be rebuilt here: ending it on every replica", "group", x.cfg.Group,
		"session", fmt.Sprintf("%x", id), "err", s.lost)
	if ok {
		x.proposeEnd(id, s.lost.Error())
	}
}

// sessionID finds s's ID.
func (x *Executor) sessionID(s *appSession) (uint64, bool) {
	x.smu.RLock()
	defer x.smu.RUnlock()
	for id, t := range x.sessions {
		if t == s {
			return id, true
		}
	}
	return 0, false
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
	for k, c := range x.shared {
		c.close()
		delete(x.shared, k)
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
	run.add(f)
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
	if c.dead != nil || (!run.local && x.fenced.Load()) {
		// A fence (the app's container is being created again) keeps
		// every entry not written yet from the app.
		why := c.dead
		if why == nil {
			why = errors.New("the app is being rebuilt")
		}
		for _, f := range out {
			reply, _ := c.framer.ErrorReply(fmt.Errorf("%w: %v", framing.ErrUnavailable, why))
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
			if c.shared && c.framer.Protocol() == framing.ProtoHTTP && framing.EndsHTTPResponseConnection(resp, f.req) {
				// The app announced a close (smr.io/http-pipelining apps
				// must not, CONTRACT.md): it runs nothing written behind
				// it, so those entries go again on a new connection,
				// whatever this replica's run boundaries were.
				c.dead = fmt.Errorf("the app closed a shared connection after %s", f.req.Op)
				c.close()
				delete(x.shared, shareKey{c.port, c.key})
				x.cfg.Log.Warn("app closed a pipelined HTTP connection; resending the requests behind the close",
					"group", x.cfg.Group, "op", f.req.Op, "resent", len(out)-k-1)
				x.resendLocked(run, c, out[k+1:])
				return
			}
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

// resendLocked writes entries the app did not run (they were behind an
// announced close on old) to a new shared connection and drains them.
func (x *Executor) resendLocked(run *pipeRun, old *appConn, rest []inflight) {
	if len(rest) == 0 {
		return
	}
	conn, err := x.dialLocked(old.port)
	var c *appConn
	if err == nil {
		c, err = x.connInState(conn, old.framer.Protocol(), old.port, true, nil) // an HTTP state: nothing to replay
	}
	if err != nil {
		// Other replicas may run them: this one cannot know it would.
		x.uncertainLocked(Cause{Kind: CauseSessionBroken, Detail: fmt.Sprintf("resend after an app close: %v", err)})
		for _, g := range rest {
			reply, _ := old.framer.ErrorReply(fmt.Errorf("%w: the app closed the connection and is unreachable: %v", framing.ErrUnavailable, err))
			run.done(g, reply)
		}
		return
	}
	c.key = old.key
	x.shared[shareKey{c.port, c.key}] = c
	c.use.Lock()
	sub := pipeRun{c: c, done: run.done}
	for _, g := range rest {
		sub.add(g)
	}
	x.drainLocked(&sub)
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
		delete(x.shared, shareKey{c.port, c.key})
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
