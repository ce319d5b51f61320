package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
)

// Files of a member's progress, beside its raft directory.
const (
	appliedFile = "applied" // fixed-width "<index> <sub> <state>\n", rewritten in place
	sandboxFile = "sandbox" // ID of the sandbox whose running app the applied position describes
)

// appliedRecordLen is the fixed length of the applied record: one pwrite of
// it replaces the whole record, so a reader never sees two halves.
const appliedRecordLen = 20 + 1 + 10 + 1 + 1 + 1

// States of the applied record.
const (
	stateApplied  = 'a' // every entry up to the position was applied by the app
	stateInFlight = 'f' // the entry at the position may have reached the app, or not
	stateRebuild  = 'r' // the app restarted empty (its container was created again)
)

// position is a point in the applied sequence: raft index, and how many of
// the requests coalesced into that raft entry were applied (they share the
// index and are applied one by one, in order).
type position struct{ index, sub uint64 }

func (p position) less(q position) bool {
	return p.index < q.index || (p.index == q.index && p.sub < q.sub)
}

// Progress remembers how far a member's running app got, so a restarted
// daemon resumes the executor there instead of replaying the whole log into
// an app that already executed it.
//
// The record is rewritten (one pwrite, no fsync) before a REQUEST's bytes
// are handed to the app (state in flight) and after every applied entry
// (state applied). A killed process (SIGKILL, crash) keeps the page cache,
// so the record survives; a machine crash also ends the app, whose sandbox
// is then new and replays from the start anyway. A restart that finds an
// entry in flight cannot know whether the app executed it: it does not
// guess, the app's state is uncertain and the member repairs it (Uncertain).
type Progress struct {
	dir       string
	f         *os.File
	resume    position // entries at or before it were applied by this sandbox's app
	fresh     bool     // no usable record: replay everything
	uncertain string   // why the running app's state is unknown ("" if it is known)
	cause     string   // and the Cause kind of that
	buf       [appliedRecordLen]byte
	// mu guards the record: the apply goroutine writes it, and MarkRebuild
	// from the CRI hook.
	mu      sync.Mutex
	written position // what the record on disk holds
	wstate  byte     // and in which state
}

// OpenProgress opens dir's progress for sandboxID. When the record belongs
// to another sandbox (a new pod: its app starts empty), or there is none,
// the member replays the whole log: the record is reset to 0 before the new
// sandbox ID is written, so a crash in between still means "replay all".
func OpenProgress(dir, sandboxID string) (*Progress, error) {
	if sandboxID == "" {
		return nil, errors.New("progress: empty sandbox ID")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("progress: %w", err)
	}
	p := &Progress{dir: dir}
	prev, err := os.ReadFile(filepath.Join(dir, sandboxFile))
	switch {
	case err == nil && strings.TrimSpace(string(prev)) == sandboxID:
		raw, rerr := os.ReadFile(filepath.Join(dir, appliedFile))
		if rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return nil, fmt.Errorf("progress: %w", rerr)
		}
		var st byte
		if p.resume, st, rerr = parseApplied(raw); rerr != nil {
			return nil, fmt.Errorf("progress: %s: %w", filepath.Join(dir, appliedFile), rerr)
		}
		// The record stays as it is until the app was repaired
		// (repaired), so a crash during the repair repairs again.
		switch st {
		case stateInFlight:
			p.cause = CauseInFlight
			p.uncertain = fmt.Sprintf("the entry at index %d (sub %d) was in flight to the app when smr-cri stopped", p.resume.index, p.resume.sub)
			p.resume = position{}
		case stateRebuild:
			p.cause = CauseContainerRestart
			p.uncertain = "the app's container was created again in the same sandbox (it starts empty)"
			p.resume = position{}
		}
	case err == nil || errors.Is(err, os.ErrNotExist):
		p.fresh = true
	default:
		return nil, fmt.Errorf("progress: %w", err)
	}
	p.f, err = os.OpenFile(filepath.Join(dir, appliedFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("progress: %w", err)
	}
	if p.fresh {
		if err := p.write(position{}, stateApplied); err != nil {
			p.f.Close()
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, sandboxFile), []byte(sandboxID+"\n"), 0o600); err != nil {
			p.f.Close()
			return nil, fmt.Errorf("progress: %w", err)
		}
	}
	if p.uncertain == "" {
		p.written, p.wstate = p.resume, stateApplied
	}
	return p, nil
}

// parseApplied reads "<index> <sub> <state>" (records of older versions have
// no state: applied); an empty record means nothing applied.
func parseApplied(raw []byte) (position, byte, error) {
	s := strings.TrimSpace(string(raw))
	if s == "" {
		return position{}, stateApplied, nil
	}
	f := strings.Fields(s)
	if len(f) != 2 && len(f) != 3 {
		return position{}, 0, fmt.Errorf("malformed applied record %q", s)
	}
	st := byte(stateApplied)
	if len(f) == 3 {
		if f[2] != string(rune(stateApplied)) && f[2] != string(rune(stateInFlight)) && f[2] != string(rune(stateRebuild)) {
			return position{}, 0, fmt.Errorf("malformed applied record %q: unknown state %q", s, f[2])
		}
		st = f[2][0]
	}
	idx, err1 := strconv.ParseUint(f[0], 10, 64)
	sub, err2 := strconv.ParseUint(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return position{}, 0, fmt.Errorf("malformed applied record %q: %w", s, err)
	}
	return position{idx, sub}, st, nil
}

// Uncertain says why the running app's state is unknown, or "" when the
// record describes it. An uncertain member brings its app to a known state
// (AppRestorer) before anything else reaches it.
func (p *Progress) Uncertain() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.uncertain
}

// MarkRebuild records that the app restarted empty (its container was
// created again): whatever runs the member next repairs it first, even
// after a crash of smr-cri.
func (p *Progress) MarkRebuild(cause Cause) error {
	p.mu.Lock()
	pos := p.written
	p.mu.Unlock()
	if err := p.write(pos, stateRebuild); err != nil {
		return err
	}
	p.mu.Lock()
	p.cause, p.uncertain = cause.Kind, cause.Detail
	p.mu.Unlock()
	return nil
}

// repaired records that the app was brought to the state at pos.
func (p *Progress) repaired(pos position) error {
	if err := p.write(pos, stateApplied); err != nil {
		return err
	}
	p.mu.Lock()
	p.uncertain = ""
	p.mu.Unlock()
	return nil
}

// Resume is the position up to which the running app already applied the log.
func (p *Progress) Resume() (index, sub uint64) { return p.resume.index, p.resume.sub }

func (p *Progress) write(pos position, state byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := fmt.Appendf(p.buf[:0], "%020d %010d %c\n", pos.index, pos.sub, state)
	if _, err := p.f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("progress: write %s: %w", filepath.Join(p.dir, appliedFile), err)
	}
	p.written, p.wstate = pos, state
	return nil
}

// Close closes the record file.
func (p *Progress) Close() error { return p.f.Close() }

// healthReporter is implemented by *Executor.
type healthReporter interface{ Health() error }

// resumingSM wraps a member's executor. Entries the running app already
// applied (up to the Progress record) are not executed again: their client
// REQUESTs are skipped, while the session bookkeeping (OPEN, CLOSE, RESET) is
// followed so that sessions still open at the resume point are re-opened on
// the app (as new app connections) before the first new entry. Every applied
// entry then moves the record forward.
type resumingSM struct {
	next  raftcore.StateMachine
	prog  *Progress
	group string
	log   *slog.Logger

	// mu guards cur and applying: the executor's hooks may run on its
	// retry goroutine (entries queued while the app was down).
	mu       sync.Mutex
	cur      position        // last entry seen
	applying []applyingEntry // the entries inside next.ApplyBatch, if any
	hint     int             // where the last hook found its entry in applying
	resumed  bool            // past the resume point
	skipped  int
	open     map[uint64]openedAt // sessions opened in the skipped prefix, by session
	// restoreErr is the failed repair of an uncertain app: it is not retried
	// (the executor is broken and refuses every request).
	restoreErr error
	started    bool // the first entry was seen (only the apply goroutine)
	// donor, if set, is restored instead of the member's own state at its
	// first restore (only the apply goroutine).
	donor *donorState
}

// applyingEntry is an entry handed to the executor with its position.
type applyingEntry struct {
	e   raftcore.Entry
	pos position
}

type openedAt struct {
	e   raftcore.Entry
	pos position
}

// appProgressNotifier is implemented by *Executor: it says when a pipeline
// run's first request is about to reach the app, and when the app answered
// a run.
type appProgressNotifier interface {
	OnRequestSending(func(raftcore.Entry))
	OnAnswered(func(raftcore.Entry))
}

// AppRestorer brings this replica's app to a known state when its state is
// uncertain, before anything else reaches it. Today there are no app
// snapshots: *Executor empties the app and returns 0, and the member replays
// the log from the start. A snapshot-backed restorer returns the index of
// the snapshot it restored, and only the log after it is replayed.
type AppRestorer interface {
	RestoreApp(ctx context.Context, cause Cause) (index uint64, err error)
}

// restoreTimeout bounds one repair (the app may still be starting): after
// it the repair stops with a clear error instead of looping.
var restoreTimeout = 2 * time.Minute

func newResumingSM(next raftcore.StateMachine, prog *Progress, group string, log *slog.Logger) *resumingSM {
	r := &resumingSM{next: next, prog: prog, group: group, log: log, resumed: prog.resume == position{},
		open: map[uint64]openedAt{}}
	if n, ok := next.(appProgressNotifier); ok {
		n.OnRequestSending(func(e raftcore.Entry) { r.record(e, stateInFlight) })
		n.OnAnswered(func(e raftcore.Entry) { r.record(e, stateApplied) })
	}
	return r
}

// record writes the progress record at entry e of the batch being applied:
// in flight before the first request of a pipeline run reaches the app (a
// daemon killed from then until the run is answered leaves a record saying
// the app may or may not have executed the run's entries, and the restart
// repairs the app instead of guessing: executing some twice, or never),
// applied once the app answered the run. Entries drained from the
// executor's queue are not in the batch being applied: their record is
// written by ApplyBatch's own rule. A record saying the app restarted empty
// is never overwritten here.
func (r *resumingSM) record(e raftcore.Entry, state byte) {
	r.mu.Lock()
	pos, ok := r.positionLocked(e)
	r.mu.Unlock()
	if ok {
		r.recordAt(pos, state)
	}
}

// recordAt writes the progress record, unless it says the app restarted
// empty (that stays for the repair).
func (r *resumingSM) recordAt(pos position, state byte) {
	r.prog.mu.Lock()
	rebuild := r.prog.wstate == stateRebuild
	r.prog.mu.Unlock()
	if rebuild {
		return
	}
	if err := r.prog.write(pos, state); err != nil {
		r.log.Error("record the app's progress", "state", string(state), "err", err)
	}
}

// positionLocked finds e among the entries being applied (hooks come in
// log order, so the search starts where the last one ended).
func (r *resumingSM) positionLocked(e raftcore.Entry) (position, bool) {
	for k := range len(r.applying) {
		i := (r.hint + k) % len(r.applying)
		a := r.applying[i].e
		if a.Index == e.Index && a.Session == e.Session && a.Seq == e.Seq && a.Origin == e.Origin {
			r.hint = i
			return r.applying[i].pos, true
		}
	}
	return position{}, false
}

// restore brings an uncertain app to a known state before the first entry
// reaches it, and resumes from the position the restorer reports.
func (r *resumingSM) restore() error {
	cause := r.prog.Uncertain()
	r.prog.mu.Lock()
	kind := r.prog.cause
	r.prog.mu.Unlock()
	if sn, ok := r.next.(raftcore.StreamSnapshotter); ok && r.donor != nil {
		return r.restoreDonor(sn)
	}
	rs, ok := r.next.(AppRestorer)
	if !ok {
		return fmt.Errorf("group %s: the app's state is uncertain (%s) and nothing can restore it", r.group, cause)
	}
	ctx, cancel := context.WithTimeout(context.Background(), restoreTimeout)
	defer cancel()
	idx, err := rs.RestoreApp(ctx, Cause{Kind: kind, Detail: cause})
	if err != nil {
		return err
	}
	pos := position{index: idx}
	if idx > 0 {
		pos.sub = 1<<32 - 1 // every request of that index
	}
	if err := r.prog.repaired(pos); err != nil {
		return err
	}
	r.prog.resume = pos
	r.resumed = pos == position{}
	return nil
}

// Apply implements raftcore.StateMachine.
func (r *resumingSM) Apply(e raftcore.Entry) ([]byte, error) {
	res := r.ApplyBatch([]raftcore.Entry{e})
	return res[0].Value, res[0].Err
}

// ApplyBatch implements raftcore.BatchStateMachine: entries up to the
// resume point are followed, not executed; the rest go to the executor.
func (r *resumingSM) ApplyBatch(es []raftcore.Entry) []raftcore.ApplyResult {
	// Only a starting member repairs: an uncertainty found later (MarkRebuild)
	// belongs to the member's next start, this executor is fenced.
	started := r.started
	r.started = true
	if !started && r.prog.Uncertain() != "" {
		if r.restoreErr = r.restore(); r.restoreErr != nil {
			// The executor is broken now (it refuses every request);
			// nothing reaches the app in an unknown state.
			r.log.Error("repair of the app failed; this replica stays broken", "group", r.group, "err", r.restoreErr)
			return raftcore.ApplyAll(r.next, es)
		}
	}
	batch := make([]applyingEntry, len(es))
	r.mu.Lock()
	for i, e := range es {
		if e.Index != r.cur.index {
			r.cur = position{e.Index, 0}
		}
		r.cur.sub++
		batch[i] = applyingEntry{e: e, pos: r.cur}
	}
	r.mu.Unlock()
	out := make([]raftcore.ApplyResult, len(es))
	i := 0
	if !r.resumed {
		for ; i < len(es) && !r.prog.resume.less(batch[i].pos); i++ {
			r.follow(batch[i])
		}
		if i == len(es) {
			return out
		}
		r.resume()
	}
	r.setApplying(batch[i:])
	res := raftcore.ApplyAll(r.next, es[i:])
	r.setApplying(nil)
	copy(out[i:], res)
	// Entries queued for an app that is not up yet are not executed yet:
	// the record stays where the app really is (its last answered run).
	if h, ok := r.next.(healthReporter); !ok || h.Health() == nil {
		r.recordAt(batch[len(batch)-1].pos, stateApplied)
	}
	return out
}

func (r *resumingSM) setApplying(batch []applyingEntry) {
	r.mu.Lock()
	r.applying, r.hint = batch, 0
	r.mu.Unlock()
}

// sessionResumer is implemented by *Executor: it follows the connection
// state of skipped entries and rebuilds it on the sessions it reopens.
type sessionResumer interface {
	TrackSkipped(raftcore.Entry)
	ResumeSessions(index uint64) int
}

// follow tracks the sessions of a skipped entry.
func (r *resumingSM) follow(a applyingEntry) {
	e := a.e
	r.skipped++
	if sr, ok := r.next.(sessionResumer); ok {
		// Entries at or below a restored snapshot (a donor's) are in its
		// tracker already: the executor ignores those.
		sr.TrackSkipped(e)
		return
	}
	if r.open == nil {
		return // skipped up to a donor's snapshot, which holds its sessions
	}
	op, err := DecodeOp(e.Data)
	if err != nil {
		return
	}
	switch op.Kind {
	case KindOpen:
		r.open[e.Session] = openedAt{e, a.pos}
	case KindClose:
		delete(r.open, e.Session)
	case KindReset:
		for id, o := range r.open {
			if o.e.Origin == e.Origin {
				delete(r.open, id)
			}
		}
	}
}

// resume re-opens the sessions still open at the resume point, so later
// REQUESTs of those sessions find their app connection: an executor
// replays each session's connection state on it (sessions.go); another
// state machine gets the sessions' OPEN entries again, in log order.
func (r *resumingSM) resume() {
	r.resumed = true
	if sr, ok := r.next.(sessionResumer); ok {
		n := sr.ResumeSessions(r.prog.resume.index)
		r.log.Info("resumed executor at the running app's position", "group", r.group,
			"index", r.prog.resume.index, "sub", r.prog.resume.sub, "skipped", r.skipped, "reopened_sessions", n)
		r.open = nil
		return
	}
	opens := make([]openedAt, 0, len(r.open))
	for _, o := range r.open {
		opens = append(opens, o)
	}
	slices.SortFunc(opens, func(a, b openedAt) int {
		switch {
		case a.pos.less(b.pos):
			return -1
		case b.pos.less(a.pos):
			return 1
		}
		return 0
	})
	for _, o := range opens {
		if _, err := r.next.Apply(o.e); err != nil {
			r.log.Warn("re-open session after restart", "group", r.group, "session", fmt.Sprintf("%x", o.e.Session), "err", err)
		}
	}
	r.log.Info("resumed executor at the running app's position", "group", r.group,
		"index", r.prog.resume.index, "sub", r.prog.resume.sub, "skipped", r.skipped, "reopened_sessions", len(opens))
	r.open = nil
}

// ReplicaState is the wrapped executor's replica state (serving,
// rebuilding, broken), so whoever holds the state machine the group runs
// (the node's status view) sees the replica's truth through the wrapper.
func (r *resumingSM) ReplicaState() string {
	if s, ok := r.next.(interface{ ReplicaState() string }); ok {
		return s.ReplicaState()
	}
	return StateServing
}
