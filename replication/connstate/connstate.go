// Package connstate tracks, per replicated client session, what a new app
// connection must be sent to be in the same state as the session's
// connection on the replicas that applied the log themselves: the Redis
// database (SELECT), protocol (HELLO 3), client name and flags (CLIENT
// SETNAME, NO-EVICT, NO-TOUCH, SETINFO), and an open transaction (MULTI and
// the commands queued since). It is fed the ordered log entries only (never
// the app's replies), so it is a pure function of the log and identical on
// every replica; it travels in app snapshots and is rebuilt on a restart by
// feeding it the entries the running app already executed.
//
// Authentication is rebuilt without a password: the tracker keeps only the
// user an AUTH (or HELLO ... AUTH) named, and only once the origin ordered
// an AUTHOK right after it (the app accepted it there, so everywhere); the
// rebuilding replica then authenticates as that user with smr-cri's own
// credential from the pod contract. Using that credential for an AUTH
// whose outcome the log does not hold could authenticate a connection
// whose AUTH failed everywhere else.
//
// Some state cannot be rebuilt by replay, and the tracker says why
// (Session.Rebuild): an active WATCH (it depends on writes of other clients
// between WATCH and EXEC), an AUTH not followed by AUTHOK (failed, or its
// outcome unknown), a connection-state command queued inside a transaction
// (whether EXEC ran it is not in the log), or a command the one command table
// (replication/rediscmd) flags as connection state that has no rebuild rule
// here. The replication layer ends such a session on every replica at one
// log position instead of letting it differ on one.
//
// Why replaying recorded commands is exact: each recorded command overwrites
// some attributes of the connection when it succeeds, and whether it
// succeeds depends only on its arguments, the server's configuration and
// the connection's authentication, which the rebuild restores first where
// it changed (a recorded AUTH is replayed at its place in the order). A
// command that fails on arguments alone (SELECT abc, CLIENT SETNAME "a b")
// is not recorded; one whose failure depends on the configuration (SELECT
// 40 with 16 databases) is recorded and fails again on replay, like it did.
// Replaying the recorded commands in order therefore gives every attribute
// the value of the last command that set it successfully.
package connstate

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// Protocols whose sessions the tracker knows (replication/framing's names).
const (
	ProtoRESP = "resp"
	ProtoHTTP = "http"
)

// Bounds on what one session's record may hold; beyond them the session is
// marked as not rebuildable rather than growing without limit.
const (
	// MaxQueuedBytes bounds the raw bytes of an open transaction's queue.
	MaxQueuedBytes = 1 << 20
	// MaxQueued bounds the number of commands queued in a transaction.
	MaxQueued = 10000
	// maxSelects bounds the distinct SELECT targets kept (see record).
	maxSelects = 32
	// maxEntries bounds the commands a rebuild replays (authentication as
	// several users in turn keeps what ran under each).
	maxEntries = 256
)

// attr is a set of connection attributes a command overwrites.
type attr uint8

const (
	attrDB attr = 1 << iota
	attrProto
	attrName
	attrNoEvict
	attrNoTouch
	attrLibName
	attrLibVer
	attrAuth
)

// entry is one recorded connection-state command.
type entry struct {
	op   string // display name ("CLIENT SETNAME")
	raw  []byte // the request as ordered
	sets attr
	// sure: it succeeds whenever the connection may run commands at all
	// (its failure depends on nothing but its arguments, checked here), so
	// it overwrites earlier entries; SELECT is not sure (the number of
	// databases is the server's configuration).
	sure bool
}

// Session is the tracked state of one open session.
type Session struct {
	Origin   uint64
	Port     int
	Protocol string

	entries  []entry
	multi    bool     // between MULTI and EXEC/DISCARD
	queue    [][]byte // requests queued since MULTI
	queueLen int      // their bytes
	watching bool
	quit     bool // QUIT: the app closed the connection
	// authed: an AUTH (or HELLO ... AUTH) ran whose outcome the log does
	// not hold (no AUTHOK followed it), since the start or last RESET.
	authed bool
	// pending is what the last AUTH or HELLO ... AUTH did if it
	// succeeded: recorded when the origin's AUTHOK follows it.
	pending []entry
	lost    string // another reason it cannot be rebuilt, until RESET
}

// Ended is a session ended by an END entry: the client's next request
// gets an error naming the index and the reason.
type Ended struct {
	Index  uint64
	Origin uint64
	Reason string
}

// Tracker holds every open session's state. It is not safe for concurrent
// use (the executor feeds it under its serial lock).
type Tracker struct {
	sessions map[uint64]*Session
	ended    map[uint64]Ended
}

// New returns an empty tracker.
func New() *Tracker {
	return &Tracker{sessions: map[uint64]*Session{}, ended: map[uint64]Ended{}}
}

// Open starts tracking a session (an OPEN entry). A second OPEN of a session
// already tracked changes nothing (replayed OPEN).
func (t *Tracker) Open(id, origin uint64, port int, protocol string) {
	if _, ok := t.sessions[id]; ok {
		return
	}
	t.sessions[id] = &Session{Origin: origin, Port: port, Protocol: protocol}
}

// OpenUnknown tracks a session whose state is not known (a snapshot of an
// older smr-cri carried sessions by identity only): a RESP session of it
// cannot be rebuilt, for the reason why.
func (t *Tracker) OpenUnknown(id, origin uint64, port int, protocol, why string) {
	t.Open(id, origin, port, protocol)
	if protocol == ProtoRESP {
		t.sessions[id].lose(why)
	}
}

// Close forgets a session (a CLOSE entry), and its end if it was ended.
func (t *Tracker) Close(id uint64) {
	delete(t.sessions, id)
	delete(t.ended, id)
}

// ResetOrigin forgets every session, open or ended, whose origin is origin
// (a RESET entry: that replica restarted, its clients are gone).
func (t *Tracker) ResetOrigin(origin uint64) {
	for id, s := range t.sessions {
		if s.Origin == origin {
			delete(t.sessions, id)
		}
	}
	for id, e := range t.ended {
		if e.Origin == origin {
			delete(t.ended, id)
		}
	}
}

// End ends an open session at index (an END entry) and reports whether it
// was open. Its requests are refused from then on until its CLOSE.
func (t *Tracker) End(id, index uint64, reason string) bool {
	s, ok := t.sessions[id]
	if !ok {
		return false
	}
	delete(t.sessions, id)
	t.ended[id] = Ended{Index: index, Origin: s.Origin, Reason: reason}
	return true
}

// EndedAt returns how the session was ended, if it was.
func (t *Tracker) EndedAt(id uint64) (Ended, bool) {
	e, ok := t.ended[id]
	return e, ok
}

// Ends returns every ended session not closed since, by session ID.
func (t *Tracker) Ends() map[uint64]Ended {
	return maps.Clone(t.ended)
}

// Session returns the tracked state of an open session.
func (t *Tracker) Session(id uint64) (*Session, bool) {
	s, ok := t.sessions[id]
	return s, ok
}

// IDs returns the open sessions in ascending order.
func (t *Tracker) IDs() []uint64 {
	ids := make([]uint64, 0, len(t.sessions))
	for id := range t.sessions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Len is the number of open sessions.
func (t *Tracker) Len() int { return len(t.sessions) }

// Request feeds one ordered request of session id: op is its display name
// as the framer classified it, raw its bytes as ordered.
func (t *Tracker) Request(id uint64, op string, raw []byte) {
	s, ok := t.sessions[id]
	if !ok || s.Protocol != ProtoRESP || s.quit {
		return
	}
	s.pending = nil // AUTHOK follows its AUTH at once, or never
	c, known := rediscmd.LookupDisplay(op)
	state := known && c.Has(rediscmd.ConnState)
	if !state {
		if s.multi {
			s.enqueue(raw)
		}
		return
	}
	args, err := rediscmd.SplitRequest(raw)
	if err != nil || len(args) == 0 {
		s.lose(fmt.Sprintf("its %s request could not be read (%v)", op, err))
		return
	}
	// Inside MULTI only these run at once; every other command is queued.
	if s.multi {
		switch c.Name {
		case "EXEC", "DISCARD":
			s.multi, s.queue, s.queueLen, s.watching = false, nil, 0, false
		case "QUIT":
			s.quit = true
		case "RESET":
			s.reset()
		case "MULTI", "WATCH":
			// Refused by Redis inside MULTI (nested MULTI, WATCH inside
			// MULTI): no effect, nothing queued.
		case "UNWATCH":
			// Queued; EXEC and DISCARD end every WATCH anyway.
			s.enqueue(raw)
		default:
			// Whether EXEC runs it is not in the log (a WATCH, a queueing
			// error); and AUTH's arguments must not be kept.
			s.queue, s.queueLen = nil, 0
			s.lose(op + " was queued inside a transaction")
		}
		return
	}
	switch c.Name {
	case "SELECT":
		if len(args) == 2 && dbIndex(args[1]) {
			s.record(entry{op: op, raw: raw, sets: attrDB})
		}
	case "HELLO":
		s.hello(op, raw, args)
	case "CLIENT|SETNAME":
		if len(args) == 3 && validName(args[2]) {
			s.record(entry{op: op, raw: raw, sets: attrName, sure: true})
		}
	case "CLIENT|NO-EVICT", "CLIENT|NO-TOUCH":
		a := attrNoEvict
		if c.Name == "CLIENT|NO-TOUCH" {
			a = attrNoTouch
		}
		if len(args) == 3 && (bytes.EqualFold(args[2], []byte("on")) || bytes.EqualFold(args[2], []byte("off"))) {
			s.record(entry{op: op, raw: raw, sets: a, sure: true})
		}
	case "CLIENT|SETINFO":
		if len(args) == 4 && validName(args[3]) {
			switch {
			case bytes.EqualFold(args[2], []byte("lib-name")):
				s.record(entry{op: op, raw: raw, sets: attrLibName, sure: true})
			case bytes.EqualFold(args[2], []byte("lib-ver")):
				s.record(entry{op: op, raw: raw, sets: attrLibVer, sure: true})
			}
		}
	case "AUTH":
		s.authed = true
		if len(args) == 2 || len(args) == 3 {
			user := []byte("default")
			if len(args) == 3 {
				user = args[1]
			}
			s.pending = []entry{authEntry(user)}
		}
	case "MULTI":
		s.multi = true
	case "EXEC", "DISCARD":
		// Outside MULTI they fail; EXEC/DISCARD also end a WATCH, but only
		// inside MULTI (handled above).
	case "WATCH":
		if len(args) >= 2 {
			s.watching = true
		}
	case "UNWATCH":
		s.watching = false
	case "RESET":
		s.reset()
	case "QUIT":
		s.quit = true
	default:
		s.lose(fmt.Sprintf("%s changes the connection's state and smr-cri has no rule to rebuild it", op))
	}
}

// hello records HELLO protover [AUTH user pass] [SETNAME name] the way Redis
// 7 parses it: a HELLO that fails on its arguments changes nothing.
func (s *Session) hello(op string, raw []byte, args [][]byte) {
	if len(args) < 2 {
		return // HELLO alone only reports the server's info
	}
	if string(args[1]) != "2" && string(args[1]) != "3" {
		return // not an integer, or NOPROTO
	}
	sets := attrProto
	keep := [][]byte{args[0], args[1]} // the HELLO without its AUTH option
	var user []byte
	for j := 2; j < len(args); j++ {
		more := len(args) - 1 - j
		switch {
		case bytes.EqualFold(args[j], []byte("AUTH")) && more >= 2:
			user = args[j+1]
			j += 2
		case bytes.EqualFold(args[j], []byte("SETNAME")) && more >= 1:
			if !validName(args[j+1]) {
				return
			}
			sets |= attrName
			keep = append(keep, args[j], args[j+1])
			j++
		default:
			return // syntax error
		}
	}
	if user != nil {
		// Whether it succeeded (and so changed anything) is in the log
		// only if the origin's AUTHOK follows; the password is never kept.
		s.authed = true
		s.pending = []entry{authEntry(user), {op: op, raw: rediscmd.EncodeRequest(keep), sets: sets, sure: true}}
		return
	}
	s.record(entry{op: op, raw: raw, sets: sets, sure: true})
}

// authOp names the recorded AUTH of a rebuild; its raw is the user name.
const authOp = "AUTH"

func authEntry(user []byte) entry {
	return entry{op: authOp, raw: slices.Clone(user), sets: attrAuth, sure: true}
}

// AuthOK feeds the origin's AUTHOK entry of session id: the AUTH (or
// HELLO ... AUTH) just before it succeeded, so the connection is
// authenticated as its user, which a rebuild can do with smr-cri's own
// credential for that user (Request.AuthUser).
func (t *Tracker) AuthOK(id uint64) {
	s, ok := t.sessions[id]
	if !ok || s.pending == nil {
		return
	}
	for _, e := range s.pending {
		s.record(e)
	}
	s.pending, s.authed = nil, false
}

// record appends e, dropping what it makes useless: an identical earlier
// command (replaying it once, at its last place, ends the same), and
// earlier entries whose every attribute is set again by sure entries after
// them; both only since the last AUTH.
func (s *Session) record(e entry) {
	// Commands before an AUTH ran as another user, whose rights may
	// differ: an AUTH is a boundary nothing is compacted across, and it
	// replaces only an AUTH right before it (nothing ran as that user).
	start := 0
	for i, o := range s.entries {
		if o.sets == attrAuth {
			start = i + 1
		}
	}
	switch {
	case e.sets == attrAuth:
		if start > 0 && start == len(s.entries) {
			s.entries = s.entries[:start-1]
		}
	default:
		s.entries = append(s.entries[:start], slices.DeleteFunc(s.entries[start:], func(o entry) bool { return bytes.Equal(o.raw, e.raw) })...)
	}
	s.entries = append(s.entries, e)
	var covered attr
	for i := len(s.entries) - 1; i >= 0; i-- {
		o := s.entries[i]
		if o.sets == attrAuth {
			// What ran before it ran as another user, whose rights may
			// differ: nothing after it covers what came before.
			covered = 0
			continue
		}
		if i < len(s.entries)-1 && o.sets&^covered == 0 {
			s.entries = slices.Delete(s.entries, i, i+1)
			continue
		}
		if o.sure {
			covered |= o.sets
		}
	}
	switch {
	case s.count(attrDB) > maxSelects:
		s.lose(fmt.Sprintf("it selected more than %d distinct databases", maxSelects))
	case len(s.entries) > maxEntries:
		s.lose(fmt.Sprintf("its connection state takes more than %d commands to rebuild", maxEntries))
	}
}

func (s *Session) count(a attr) int {
	n := 0
	for _, e := range s.entries {
		if e.sets&a != 0 {
			n++
		}
	}
	return n
}

func (s *Session) enqueue(raw []byte) {
	if s.lost != "" || s.authed || s.watching {
		return // not rebuildable anyway: keep no bytes
	}
	if len(s.queue) >= MaxQueued || s.queueLen+len(raw) > MaxQueuedBytes {
		s.queue, s.queueLen = nil, 0
		s.lose(fmt.Sprintf("its open transaction holds more than %d commands or %d bytes", MaxQueued, MaxQueuedBytes))
		return
	}
	s.queue = append(s.queue, slices.Clone(raw))
	s.queueLen += len(raw)
}

func (s *Session) lose(why string) {
	if s.lost == "" {
		s.lost = why
	}
}

// reset is Redis' RESET: database 0, RESP2, no name, no flags, no
// transaction or WATCH, the default user. CLIENT SETINFO's library name and
// version are not connection state RESET clears.
func (s *Session) reset() {
	s.entries = slices.DeleteFunc(s.entries, func(e entry) bool { return e.sets&^(attrLibName|attrLibVer) != 0 })
	s.multi, s.queue, s.queueLen, s.watching, s.authed, s.pending, s.lost = false, nil, 0, false, false, nil, ""
}

// ErrNotRebuildable wraps every reason a session's connection state cannot
// be rebuilt by replay.
var ErrNotRebuildable = errors.New("connection state cannot be rebuilt by replay")

// Request is one request of a rebuild, in the app's protocol. A request
// with AuthUser authenticates the connection as that user: the log keeps
// no password, so the rebuilder sends AUTH with its own credential for
// that user (and fails the rebuild without one), and it must succeed.
type Request struct {
	Op       string
	Raw      []byte
	AuthUser string
}

var multiRequest = Request{Op: "MULTI", Raw: []byte("*1\r\n$5\r\nMULTI\r\n")}

// Rebuild returns the requests that bring a new app connection to the
// session's state, in order (their replies are the app's to give, errors
// included: a recorded command that failed fails again), or an error
// wrapping ErrNotRebuildable that says why it cannot be done. quit means
// the app closed the session's connection (QUIT): nothing may reopen it.
func (s *Session) Rebuild() (reqs []Request, quit bool, err error) {
	if s.quit {
		return nil, true, nil
	}
	switch {
	case s.watching:
		return nil, false, fmt.Errorf("%w: WATCH is active (whether EXEC would run depends on writes the new connection never watched)", ErrNotRebuildable)
	case s.authed:
		return nil, false, fmt.Errorf("%w: it ran AUTH and whether that succeeded is not in the log", ErrNotRebuildable)
	case s.lost != "":
		return nil, false, fmt.Errorf("%w: %s", ErrNotRebuildable, s.lost)
	}
	for _, e := range s.entries {
		if e.sets == attrAuth {
			reqs = append(reqs, Request{Op: authOp, AuthUser: string(e.raw)})
			continue
		}
		reqs = append(reqs, Request{Op: e.op, Raw: e.raw})
	}
	if s.multi {
		reqs = append(reqs, multiRequest)
		for _, raw := range s.queue {
			reqs = append(reqs, Request{Op: queuedOp, Raw: raw})
		}
	}
	return reqs, false, nil
}

// Shareable reports whether a connection in exactly this session's state may
// be shared with other sessions in the same state (the executor's pipelined
// connections): no transaction or WATCH under way, no AUTH of unknown
// outcome, nothing that cannot be rebuilt, not closed by QUIT. key names the
// state (equal keys: equal connection states; "" is a fresh connection's)
// and reqs bring a fresh connection to it.
func (s *Session) Shareable() (key string, reqs []Request, ok bool) {
	if s.Protocol != ProtoRESP {
		return "", nil, true // an HTTP connection has no state to share
	}
	if s.multi {
		return "", nil, false
	}
	reqs, quit, err := s.Rebuild()
	if err != nil || quit {
		return "", nil, false
	}
	var b strings.Builder
	for _, r := range reqs {
		fmt.Fprintf(&b, "%s\x00%s\x00%s\x00", r.Op, r.AuthUser, r.Raw)
	}
	return b.String(), reqs, true
}

// queuedOp names a request replayed into an open transaction.
const queuedOp = "queued"

// dbIndex reports whether a is a database number SELECT may accept: a
// decimal integer in 0..2^31-1 as Redis parses it (no sign, no leading
// zero, no spaces). Whether the server has that many databases is its
// configuration, the same on every replica.
func dbIndex(a []byte) bool {
	if len(a) == 0 || len(a) > 10 || (a[0] == '0' && len(a) > 1) {
		return false
	}
	var n int64
	for _, c := range a {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int64(c-'0')
	}
	return n <= 1<<31-1
}

// validName is Redis' rule for client names (and SETINFO values): printable
// ASCII without spaces; empty clears the name.
func validName(a []byte) bool {
	for _, c := range a {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

// Describe is a short, password-free account of a session's state for logs
// and tests.
func (s *Session) Describe() string {
	var b strings.Builder
	for _, e := range s.entries {
		fmt.Fprintf(&b, "%s; ", e.op)
	}
	if s.multi {
		fmt.Fprintf(&b, "MULTI +%d queued; ", len(s.queue))
	}
	for _, f := range []struct {
		on   bool
		what string
	}{{s.watching, "WATCH"}, {s.authed, "AUTH"}, {s.quit, "QUIT"}, {s.lost != "", "lost: " + s.lost}} {
		if f.on {
			fmt.Fprintf(&b, "%s; ", f.what)
		}
	}
	return strings.TrimSuffix(b.String(), "; ")
}
