package replication

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/smr-io/smr-cri/raftcore"
)

// Files of a member's progress, beside its raft directory.
const (
	appliedFile = "applied" // fixed-width "<index> <sub>\n", rewritten in place after each apply
	sandboxFile = "sandbox" // ID of the sandbox whose running app the applied position describes
)

// appliedRecordLen is the fixed length of the applied record: one pwrite of
// it replaces the whole record, so a reader never sees two halves.
const appliedRecordLen = 20 + 1 + 10 + 1

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
// The record is rewritten (one pwrite, no fsync) after every applied entry.
// A killed process (SIGKILL, crash) keeps the page cache, so the record
// survives; a machine crash also ends the app, whose sandbox is then new and
// replays from the start anyway. The narrow window: an entry the app has
// executed, when the daemon dies before the record is written, is executed
// once more after the restart (at most one request per group).
type Progress struct {
	dir     string
	f       *os.File
	resume  position // entries at or before it were applied by this sandbox's app
	fresh   bool     // no usable record: replay everything
	buf     [appliedRecordLen]byte
	written position // what the record on disk holds
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
		if p.resume, rerr = parseApplied(raw); rerr != nil {
			return nil, fmt.Errorf("progress: %s: %w", filepath.Join(dir, appliedFile), rerr)
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
		if err := p.write(position{}); err != nil {
			p.f.Close()
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, sandboxFile), []byte(sandboxID+"\n"), 0o600); err != nil {
			p.f.Close()
			return nil, fmt.Errorf("progress: %w", err)
		}
	}
	p.written = p.resume
	return p, nil
}

// parseApplied reads "<index> <sub>"; an empty record means nothing applied.
func parseApplied(raw []byte) (position, error) {
	s := strings.TrimSpace(string(raw))
	if s == "" {
		return position{}, nil
	}
	f := strings.Fields(s)
	if len(f) != 2 {
		return position{}, fmt.Errorf("malformed applied record %q", s)
	}
	idx, err1 := strconv.ParseUint(f[0], 10, 64)
	sub, err2 := strconv.ParseUint(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return position{}, fmt.Errorf("malformed applied record %q: %w", s, err)
	}
	return position{idx, sub}, nil
}

// Resume is the position up to which the running app already applied the log.
func (p *Progress) Resume() (index, sub uint64) { return p.resume.index, p.resume.sub }

func (p *Progress) write(pos position) error {
	b := fmt.Appendf(p.buf[:0], "%020d %010d\n", pos.index, pos.sub)
	if _, err := p.f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("progress: write %s: %w", filepath.Join(p.dir, appliedFile), err)
	}
	p.written = pos
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

	// mu guards cur and applying: the executor's sent hook may run on its
	// retry goroutine (entries queued while the app was down).
	mu       sync.Mutex
	cur      position        // last entry seen
	applying *raftcore.Entry // the entry inside next.Apply, if any
	resumed  bool            // past the resume point
	skipped  int
	open     map[uint64]openedAt // sessions opened in the skipped prefix, by session
}

type openedAt struct {
	e   raftcore.Entry
	pos position
}

// requestSentNotifier is implemented by *Executor.
type requestSentNotifier interface {
	OnRequestSent(func(raftcore.Entry))
}

func newResumingSM(next raftcore.StateMachine, prog *Progress, group string, log *slog.Logger) *resumingSM {
	r := &resumingSM{next: next, prog: prog, group: group, log: log, resumed: prog.resume == position{},
		open: map[uint64]openedAt{}}
	if n, ok := next.(requestSentNotifier); ok {
		n.OnRequestSent(r.requestSent)
	}
	return r
}

// requestSent records a REQUEST as applied the moment its bytes reach the
// app, not when its response has been read: a daemon killed while the app
// executes it must not execute it again after the restart (the app has it).
// What is left is the gap between the write to the app and this record (one
// small pwrite), instead of the whole app round trip. Entries drained from
// the executor's queue are not the one being applied: their record is
// written by Apply's own rule.
func (r *resumingSM) requestSent(e raftcore.Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.applying
	if a == nil || a.Index != e.Index || a.Session != e.Session || a.Seq != e.Seq || a.Origin != e.Origin {
		return
	}
	if err := r.prog.write(r.cur); err != nil {
		r.log.Error("record applied position", "err", err)
	}
}

// Apply implements raftcore.StateMachine.
func (r *resumingSM) Apply(e raftcore.Entry) ([]byte, error) {
	r.mu.Lock()
	if e.Index != r.cur.index {
		r.cur = position{e.Index, 0}
	}
	r.cur.sub++
	cur := r.cur
	r.mu.Unlock()
	if !r.resumed {
		if !r.prog.resume.less(cur) {
			r.follow(e)
			return nil, nil
		}
		r.resume()
	}
	r.setApplying(&e)
	val, err := r.next.Apply(e)
	r.setApplying(nil)
	// A REQUEST's record was already written by requestSent while the app
	// round trip ran: one pwrite per entry, not two. Entries queued for an
	// app that is not up yet are not executed yet: keep the record where the
	// app really is.
	if cur == r.prog.written {
		return val, err
	}
	if h, ok := r.next.(healthReporter); !ok || h.Health() == nil {
		if werr := r.prog.write(cur); werr != nil {
			r.log.Error("record applied position", "err", werr)
		}
	}
	return val, err
}

func (r *resumingSM) setApplying(e *raftcore.Entry) {
	r.mu.Lock()
	r.applying = e
	r.mu.Unlock()
}

// follow tracks the sessions of a skipped entry.
func (r *resumingSM) follow(e raftcore.Entry) {
	r.skipped++
	op, err := DecodeOp(e.Data)
	if err != nil {
		return
	}
	switch op.Kind {
	case KindOpen:
		r.open[e.Session] = openedAt{e, r.cur}
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

// resume re-opens, in log order, the sessions still open at the resume
// point, so later REQUESTs of those sessions find their app connection.
func (r *resumingSM) resume() {
	r.resumed = true
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
