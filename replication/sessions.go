package replication

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/connstate"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// Surviving sessions. Every replica keeps one app connection per client
// session, and the connection's state (Redis SELECT, HELLO 3, CLIENT
// SETNAME, an open MULTI ...) is part of what the log means. A replica that
// opens such a connection anew while the session lives on elsewhere (a
// restart of smr-cri resuming a running app, a restore from an app
// snapshot) first replays the session's state, as connstate recorded it
// from the log (an accepted AUTH with smr-cri's own credential for that
// user: the log's AUTHOK says it was accepted, and no password is kept).
// A session whose state cannot be replayed (WATCH, an AUTH whose outcome is
// not in the log, ...) is ended on every replica at one log position: this replica proposes an
// END entry, every replica closes the session when it applies it, and the
// client's next request gets ErrSessionEnded naming the position and why.
// Until the END applies the session is lost here: a request of it applied
// meanwhile ran everywhere but here, so this replica's app is uncertain and
// repaired (CauseSessionLost), never silently different.

// CauseSessionLost: a request of a session whose connection state this
// replica could not rebuild was applied before the session's END.
const CauseSessionLost = "session-lost"

// ErrSessionEnded is the error a client of an ended session gets.
var ErrSessionEnded = errors.New("session ended")

// errAppClosedSession is the state of a session whose app connection the
// app closed (QUIT) before it was rebuilt: it stays closed here as well.
var errAppClosedSession = errors.New("the app closed this session's connection (QUIT)")

// track feeds the connection-state tracker one entry, in log order, whether
// or not the app executes it now (queued, fenced, broken): the tracker
// follows the log, not this replica's app.
func (x *Executor) track(e raftcore.Entry, op Op) {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	if e.Index <= x.connsFloor {
		return // the snapshot the tracker came from holds its effect
	}
	trackEntry(x.conns, x.cfg.Ports, e, op)
	if op.Kind == KindEnd && op.End != nil {
		delete(x.ending, op.End.Session)
	}
}

// trackEntry is the tracker's reading of one entry.
func trackEntry(t *connstate.Tracker, ports []Port, e raftcore.Entry, op Op) {
	switch op.Kind {
	case KindOpen:
		if slices.Contains(ports, Port{Number: op.Port, Protocol: op.Protocol}) {
			t.Open(e.Session, e.Origin, op.Port, op.Protocol)
		}
	case KindRequest:
		t.Request(e.Session, op.Name, op.Raw)
	case KindClose:
		t.Close(e.Session)
	case KindReset:
		t.ResetOrigin(e.Origin)
	case KindEnd:
		if op.End != nil {
			t.End(op.End.Session, e.Index, op.End.Reason)
		}
	case KindAuthOK:
		t.AuthOK(e.Session)
	}
}

// TrackSkipped feeds the tracker an entry the running app already executed
// (a restarted member skips them up to its progress record): the sessions'
// state is then known when they are reopened (ResumeSessions).
func (x *Executor) TrackSkipped(e raftcore.Entry) {
	op, err := DecodeOp(e.Data)
	if err != nil {
		return
	}
	x.track(e, op)
}

// ResumeSessions opens, after a restart resumed the executor at index, a
// new app connection for every session open there and replays its state.
func (x *Executor) ResumeSessions(index uint64) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.reopenAllLocked(index)
}

// reopenAllLocked reopens every tracked session that has no app connection
// here, in ascending ID order; it returns how many it reopened.
func (x *Executor) reopenAllLocked(index uint64) int {
	x.cmu.Lock()
	ids := x.conns.IDs()
	x.cmu.Unlock()
	n := 0
	for _, id := range ids {
		if _, ok := x.session(id); ok {
			continue
		}
		x.reopenLocked(id, index)
		n++
	}
	return n
}

// reopenLocked opens a new app connection for session id and replays its
// connection state; a session that cannot be rebuilt is kept as lost and
// ended on every replica (proposeEnd).
func (x *Executor) reopenLocked(id, index uint64) {
	x.cmu.Lock()
	ts, ok := x.conns.Session(id)
	var (
		reqs []connstate.Request
		quit bool
		err  error
	)
	if ok {
		reqs, quit, err = ts.Rebuild()
	}
	x.cmu.Unlock()
	if !ok {
		return
	}
	f, ferr := framing.New(ts.Protocol, x.cfg.Framing)
	if ferr != nil {
		return // the tracker only opens sessions of configured ports
	}
	s := &appSession{origin: ts.Origin, port: ts.Port, framer: f}
	switch {
	case quit:
		s.own = &appConn{framer: f, port: ts.Port, dead: errAppClosedSession}
	case err != nil:
		s.lost = err
	case len(reqs) == 0 && x.pipelines(ts.Protocol):
		// Nothing to rebuild: the session shares the pipelined connection,
		// which is in the state of a fresh one.
	default:
		if rerr := x.replayLocked(s, reqs); rerr != nil {
			s.lost = fmt.Errorf("%w: replaying it on this replica failed: %w", connstate.ErrNotRebuildable, rerr)
		}
	}
	if s.lost != nil {
		s.own = nil
		x.cfg.Log.Warn("session's connection state cannot be rebuilt here: ending it on every replica", "group", x.cfg.Group,
			"session", fmt.Sprintf("%x", id), "index", index, "err", s.lost)
		x.proposeEnd(id, s.lost.Error())
	}
	x.smu.Lock()
	x.sessions[id] = s
	n := len(x.sessions)
	x.smu.Unlock()
	if s.lost == nil && !quit {
		x.reshareLocked(s, id)
	}
	x.m.setSessions(n)
	x.cfg.Trace.Write(TraceLine{Kind: "reopen", Group: x.cfg.Group, Index: index, Session: id, Origin: ts.Origin,
		Op: fmt.Sprintf("REOPEN requests=%d lost=%t", len(reqs), s.lost != nil)})
}

// replayLocked dials the app for s's own connection and replays the
// session's state on it (replayOn).
func (x *Executor) replayLocked(s *appSession, reqs []connstate.Request) error {
	ctx, cancel := context.WithTimeout(context.Background(), x.cfg.DialTimeout)
	conn, err := x.cfg.Dialer.DialApp(ctx, s.port)
	cancel()
	if err != nil {
		return fmt.Errorf("dial app: %w", err)
	}
	own, err := x.connInState(conn, s.framer.Protocol(), s.port, false, reqs)
	if err != nil {
		return err
	}
	s.own = own
	return nil
}

// authRequest is AUTH with smr-cri's own credential for user (the pod
// contract's Secret, held in memory only): the session's client
// authenticated as user, and the log keeps no password.
func (x *Executor) authRequest(user string) ([]byte, error) {
	c := x.creds
	if c.Password == "" {
		return nil, fmt.Errorf("it authenticated as %q and smr-cri has no credential for the app (smr.io/app-credentials)", user)
	}
	if own := cmp.Or(c.Username, "default"); own != user {
		return nil, fmt.Errorf("it authenticated as %q and smr-cri's credential (%s) is for %q", user, c.Source, own)
	}
	if c.Username == "" {
		return rediscmd.EncodeRequest([][]byte{[]byte("AUTH"), []byte(c.Password)}), nil
	}
	return rediscmd.EncodeRequest([][]byte{[]byte("AUTH"), []byte(c.Username), []byte(c.Password)}), nil
}

// proposeEnd orders an END of session id (once per session until it is
// applied), retrying until it is ordered or the executor closes. The
// proposal carries no session of its own: the proposer is not the
// session's origin, whose sequence numbers it must not use.
func (x *Executor) proposeEnd(id uint64, reason string) {
	x.cmu.Lock()
	if x.ending[id] {
		x.cmu.Unlock()
		return
	}
	x.ending[id] = true
	x.cmu.Unlock()
	data := Op{Kind: KindEnd, End: &EndOp{Session: id, Reason: reason}}.Encode()
	go func() {
		base, cancelBase := context.WithCancel(context.Background())
		defer cancelBase()
		go func() {
			select {
			case <-x.closed:
				cancelBase()
			case <-base.Done():
			}
		}()
		for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
			if o := x.audit.orderer.Load(); o != nil {
				ctx, cancel := context.WithTimeout(base, 10*time.Second)
				_, err := (*o).Propose(ctx, raftcore.Proposal{Data: data})
				cancel()
				if err == nil {
					return
				}
				x.cfg.Log.Warn("order END of a session (will retry)", "group", x.cfg.Group, "session", fmt.Sprintf("%x", id), "err", err)
			}
			select {
			case <-base.Done():
				return
			case <-time.After(backoff):
			}
		}
	}()
}

// endLocked applies an END: the session's app connection closes here, as
// on every replica at this position.
func (x *Executor) endLocked(e raftcore.Entry, end *EndOp) {
	if end == nil {
		return
	}
	if _, ok := x.session(end.Session); ok {
		x.closeSessionLocked(end.Session)
		x.cfg.Log.Info("session ended on every replica", "group", x.cfg.Group, "session", fmt.Sprintf("%x", end.Session),
			"index", e.Index, "proposed_by", e.Origin, "reason", end.Reason)
	}
}

// noSessionErr is the reply to a request of a session without an app
// connection here: ended (ErrSessionEnded, naming where and why), or never
// opened on this replica.
func (x *Executor) noSessionErr(id uint64) error {
	if end, ok := x.SessionEnded(id); ok {
		return fmt.Errorf("%w at log index %d on every replica: %s; reconnect to start a new session",
			ErrSessionEnded, end.Index, end.Reason)
	}
	return fmt.Errorf("%w: session %x is not open on this replica", framing.ErrUnavailable, id)
}

// SessionEnded reports whether session id was ended by an END entry (and
// not closed since), with the END's index and reason.
func (x *Executor) SessionEnded(id uint64) (connstate.Ended, bool) {
	x.cmu.Lock()
	defer x.cmu.Unlock()
	return x.conns.EndedAt(id)
}

// authAccepted reports whether req is an AUTH, or a HELLO with its AUTH
// option, that the app accepted (reply val is not an error): the origin
// then orders AUTHOK in the session, so connstate knows the session is
// authenticated without ever seeing the app's reply or keeping a password.
func authAccepted(req framing.Request, val []byte) bool {
	if len(val) == 0 || val[0] == '-' {
		return false
	}
	switch req.Op {
	case "AUTH":
		return true
	case "HELLO":
		args, err := rediscmd.SplitRequest(req.Raw)
		if err != nil {
			return false
		}
		for j := 2; j+2 < len(args); j++ {
			if strings.EqualFold(string(args[j]), "AUTH") {
				return true
			}
		}
	}
	return false
}
