package replication

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/raftcore"
)

// recordingSM records which entries reached the executor.
type recordingSM struct {
	got    []string
	health error
}

func (r *recordingSM) Apply(e raftcore.Entry) ([]byte, error) {
	op, err := DecodeOp(e.Data)
	if err != nil {
		return nil, err
	}
	name := op.Name
	if op.Kind != KindRequest {
		name = op.Kind.String()
	}
	r.got = append(r.got, name)
	return nil, nil
}

func (r *recordingSM) Health() error { return r.health }

func entry(t *testing.T, index, session, origin uint64, op Op) raftcore.Entry {
	t.Helper()
	return raftcore.Entry{Group: "ns.g", Index: index, Term: 1, Session: session, Origin: origin, Data: op.Encode()}
}

// logOf is a small log: sessions 10 (origin 1) and 20 (origin 2) open;
// 10 closes at index 5; two requests share index 6 (a coalesced batch);
// origin 1 restarts (RESET) at 7.
func logOf(t *testing.T) []raftcore.Entry {
	t.Helper()
	open := Op{Kind: KindOpen, Port: 6379, Protocol: "resp"}
	req := func(name string) Op {
		return Op{Kind: KindRequest, Name: name, Raw: []byte("*1\r\n$4\r\n" + name + "\r\n")}
	}
	return []raftcore.Entry{
		entry(t, 1, 10, 1, open),
		entry(t, 2, 20, 2, open),
		entry(t, 3, 10, 1, req("A")),
		entry(t, 4, 20, 2, req("B")),
		entry(t, 5, 10, 1, Op{Kind: KindClose}),
		entry(t, 6, 20, 2, req("C1")),
		entry(t, 6, 20, 2, req("C2")),
		entry(t, 7, 0, 1, Op{Kind: KindReset}),
		entry(t, 8, 20, 2, req("D")),
	}
}

func TestResumingSM(t *testing.T) {
	tests := []struct {
		name     string
		crashAt  int    // entries applied before the daemon died
		sandbox2 string // sandbox of the restart
		want     []string
	}{
		{"same sandbox, crash mid-batch: resume after C1, only session 20 (10 closed) re-opened", 6, "sb1",
			[]string{"OPEN", "C2", "RESET", "D"}},
		{"same sandbox, crash after B: both open sessions re-opened before CLOSE", 4, "sb1",
			[]string{"OPEN", "OPEN", "CLOSE", "C1", "C2", "RESET", "D"}},
		{"same sandbox, crash before anything", 0, "sb1",
			[]string{"OPEN", "OPEN", "A", "B", "CLOSE", "C1", "C2", "RESET", "D"}},
		{"same sandbox, crash at the end: nothing again", 9, "sb1", nil},
		{"new sandbox (fresh app): replay everything", 6, "sb2",
			[]string{"OPEN", "OPEN", "A", "B", "CLOSE", "C1", "C2", "RESET", "D"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			log := logOf(t)
			_, prog := firstRun(t, dir, &recordingSM{}, log[:tc.crashAt])
			// SIGKILL: the file is not closed; the page cache keeps the record.
			if got := restartAndApply(t, dir, tc.sandbox2, log); !slices.Equal(got, tc.want) {
				t.Fatalf("executor got %q, want %q", got, tc.want)
			}
			prog.Close()
		})
	}
}

// While the executor queues entries for an app that is not up, the record
// stays where the app really is.
func TestResumingSMQueuedNotRecorded(t *testing.T) {
	dir := t.TempDir()
	log := logOf(t)
	prog, err := OpenProgress(dir, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingSM{}
	sm := newResumingSM(rec, prog, "ns.g", slog.New(slog.DiscardHandler))
	for i, e := range log {
		if i == 4 {
			rec.health = errors.New("queued")
		}
		if _, err := sm.Apply(e); err != nil {
			t.Fatal(err)
		}
	}
	prog.Close()
	prog2, err := OpenProgress(dir, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	defer prog2.Close()
	if idx, sub := prog2.Resume(); idx != 4 || sub != 1 {
		t.Fatalf("resume at %d/%d, want 4/1", idx, sub)
	}
}

func TestOpenProgressBadInput(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenProgress(dir, ""); err == nil || !strings.Contains(err.Error(), "empty sandbox") {
		t.Fatalf("empty sandbox ID: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, sandboxFile), []byte("sb1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, rec := range []string{"12", "x 1", "1 2 3", "-1 0", "1 2 z", "1 2 a b"} {
		if err := os.WriteFile(filepath.Join(dir, appliedFile), []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenProgress(dir, "sb1"); err == nil || !strings.Contains(err.Error(), "malformed applied record") {
			t.Fatalf("record %q: %v", rec, err)
		}
	}
	// A malformed record of another sandbox does not matter: that app is gone.
	p, err := OpenProgress(dir, "sb2")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if idx, sub := p.Resume(); idx != 0 || sub != 0 {
		t.Fatalf("new sandbox resumes at %d/%d", idx, sub)
	}
}

// sendingSM is an executor that exposes the sending hook, so a test can stop
// "the daemon" right after a REQUEST was recorded in flight, and records
// the repairs asked of it.
type sendingSM struct {
	recordingSM
	sending  func(raftcore.Entry)
	restored []Cause
}

func (s *sendingSM) OnRequestSending(f func(raftcore.Entry)) { s.sending = f }
func (s *sendingSM) OnAnswered(func(raftcore.Entry))         {}

func (s *sendingSM) RestoreApp(_ context.Context, c Cause) (uint64, error) {
	s.restored = append(s.restored, c)
	s.got = append(s.got, "RESTORE")
	return 0, nil
}

// A request in flight to the app when the daemon died may or may not have
// been executed: the restart does not guess, it restores the app (emptied)
// and replays the whole log; a second restart after that resumes normally.
func TestResumingSMRequestInFlightAtCrash(t *testing.T) {
	all := []string{"RESTORE", "OPEN", "OPEN", "A", "B", "CLOSE", "C1", "C2", "RESET", "D"}
	tests := []struct {
		name    string
		crashAt int // the entry in flight (1-based) when the daemon dies
	}{
		{"A in flight", 3},
		{"C1 in flight, inside a batch", 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			log := logOf(t)
			// Apply up to the entry in flight, then start applying it as
			// resumingSM.Apply does and stop right after the executor's
			// hook: the daemon dies while the bytes go to the app.
			first := &sendingSM{}
			sm, prog := firstRun(t, dir, first, log[:tc.crashAt-1])
			inFlight := log[tc.crashAt-1]
			sm.mu.Lock()
			if inFlight.Index != sm.cur.index {
				sm.cur = position{inFlight.Index, 0}
			}
			sm.cur.sub++
			sm.applying = []applyingEntry{{e: inFlight, pos: sm.cur}}
			sm.mu.Unlock()
			first.sending(inFlight) // recorded in flight; then SIGKILL
			prog.Close()

			again, err := OpenProgress(dir, "sb1")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(again.Uncertain(), "in flight") {
				t.Fatalf("uncertain = %q, want the entry in flight named", again.Uncertain())
			}
			rec := &sendingSM{}
			sm2 := newResumingSM(rec, again, "ns.g", slog.New(slog.DiscardHandler))
			for _, e := range log {
				if _, err := sm2.Apply(e); err != nil {
					t.Fatal(err)
				}
			}
			again.Close()
			if !slices.Equal(rec.got, all) || len(rec.restored) != 1 || rec.restored[0].Kind != CauseInFlight {
				t.Fatalf("executor got %q (repairs %v), want %q after one %s repair", rec.got, rec.restored, all, CauseInFlight)
			}
			// The repair was recorded: the next restart resumes at the end.
			if got := restartAndApply(t, dir, "sb1", log); got != nil {
				t.Fatalf("after the repaired run the executor got %q, want nothing", got)
			}
		})
	}
}

// An uncertain app that nothing can restore is never fed: the repair fails
// once (no loop) and the error is logged; the record stays in flight.
func TestResumingSMUncertainWithoutRestorer(t *testing.T) {
	dir := t.TempDir()
	prog, err := OpenProgress(dir, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	if err := prog.write(position{3, 1}, stateInFlight); err != nil {
		t.Fatal(err)
	}
	prog.Close()
	again, err := OpenProgress(dir, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	sm := newResumingSM(&recordingSM{}, again, "ns.g", slog.New(slog.DiscardHandler))
	if sm.restore() == nil {
		t.Fatal("restore without an AppRestorer succeeded")
	}
	if again.Uncertain() == "" {
		t.Fatal("a failed repair cleared the uncertainty")
	}
}

// restartAndApply is the daemon coming back for sandboxID: it opens dir's
// progress record, applies the whole log and returns what reached the app.
func restartAndApply(t *testing.T, dir, sandboxID string, log []raftcore.Entry) []string {
	t.Helper()
	prog, err := OpenProgress(dir, sandboxID)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	rec := &recordingSM{}
	sm := newResumingSM(rec, prog, "ns.g", slog.New(slog.DiscardHandler))
	for _, e := range log {
		if _, err := sm.Apply(e); err != nil {
			t.Fatal(err)
		}
	}
	return rec.got
}

// firstRun is the daemon's first life for sandbox sb1: it opens dir's
// progress record and applies entries through next. The caller closes prog
// (or leaves it open, as a SIGKILL would).
func firstRun(t *testing.T, dir string, next raftcore.StateMachine, entries []raftcore.Entry) (*resumingSM, *Progress) {
	t.Helper()
	prog, err := OpenProgress(dir, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	sm := newResumingSM(next, prog, "ns.g", slog.New(slog.DiscardHandler))
	for _, e := range entries {
		if _, err := sm.Apply(e); err != nil {
			t.Fatal(err)
		}
	}
	return sm, prog
}
