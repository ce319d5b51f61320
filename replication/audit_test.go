package replication

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
)

func sum(b byte) [32]byte { return [32]byte{b} }

func TestDecideMajority(t *testing.T) {
	a, b, c := sum(1), sum(2), sum(3)
	skip := DigestReport{Skipped: "too large"}
	tests := []struct {
		name    string
		voters  []uint64
		reports map[uint64]DigestReport
		want    verdict
	}{
		{"all agree", []uint64{1, 2, 3}, map[uint64]DigestReport{1: {Sum: a}, 2: {Sum: a}, 3: {Sum: a}},
			verdict{Majority: a, HasMajority: true, Agree: []uint64{1, 2, 3}}},
		{"one diverged", []uint64{1, 2, 3}, map[uint64]DigestReport{1: {Sum: a}, 2: {Sum: b}, 3: {Sum: a}},
			verdict{Majority: a, HasMajority: true, Agree: []uint64{1, 3}, Diverged: []uint64{2}}},
		{"majority before the last report", []uint64{1, 2, 3}, map[uint64]DigestReport{1: {Sum: a}, 3: {Sum: a}},
			verdict{Majority: a, HasMajority: true, Agree: []uint64{1, 3}, Missing: []uint64{2}}},
		{"one report is no majority", []uint64{1, 2, 3}, map[uint64]DigestReport{2: {Sum: b}},
			verdict{Missing: []uint64{1, 3}}},
		{"all differ: alarm", []uint64{1, 2, 3}, map[uint64]DigestReport{1: {Sum: a}, 2: {Sum: b}, 3: {Sum: c}},
			verdict{NoMajority: true}},
		{"skipped voter blocks a majority of two against one", []uint64{1, 2, 3}, map[uint64]DigestReport{1: {Sum: a}, 2: skip, 3: {Sum: b}},
			verdict{Skipped: []uint64{2}, NoMajority: true}},
		{"two skipped, one digest: inconclusive", []uint64{1, 2, 3}, map[uint64]DigestReport{1: {Sum: a}, 2: skip, 3: skip},
			verdict{Skipped: []uint64{2, 3}}},
		{"skipped voter beside a majority", []uint64{1, 2, 3}, map[uint64]DigestReport{1: {Sum: a}, 2: skip, 3: {Sum: a}},
			verdict{Majority: a, HasMajority: true, Agree: []uint64{1, 3}, Skipped: []uint64{2}}},
		{"non-voter ignored", []uint64{1, 2, 3}, map[uint64]DigestReport{1: {Sum: a}, 2: {Sum: a}, 9: {Sum: b}},
			verdict{Majority: a, HasMajority: true, Agree: []uint64{1, 2}, Missing: []uint64{3}}},
		{"even group: half is no majority", []uint64{1, 2, 3, 4}, map[uint64]DigestReport{1: {Sum: a}, 2: {Sum: a}, 3: {Sum: b}, 4: {Sum: b}},
			verdict{NoMajority: true}},
		{"five members, two diverged alike", []uint64{1, 2, 3, 4, 5},
			map[uint64]DigestReport{1: {Sum: a}, 2: {Sum: b}, 3: {Sum: a}, 4: {Sum: b}, 5: {Sum: a}},
			verdict{Majority: a, HasMajority: true, Agree: []uint64{1, 3, 5}, Diverged: []uint64{2, 4}}},
		{"single member", []uint64{1}, map[uint64]DigestReport{1: {Sum: a}},
			verdict{Majority: a, HasMajority: true, Agree: []uint64{1}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := decide(tc.voters, tc.reports); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("decide = %+v\nwant     %+v", got, tc.want)
			}
		})
	}
}

func TestAuditEntriesRoundTrip(t *testing.T) {
	for _, op := range []Op{
		{Kind: KindAudit, Audit: &AuditOp{AtMillis: 1764770000123, WindowMillis: 10000, Voters: []uint64{1, 2, 3}}},
		{Kind: KindAudit, Audit: &AuditOp{AtMillis: 1, Voters: []uint64{1 << 40}}},
		{Kind: KindDigest, Digest: &DigestReport{Audit: 42, Sum: sum(7), Keys: 100000}},
		{Kind: KindDigest, Digest: &DigestReport{Audit: 43, Skipped: "too large to digest"}},
	} {
		got, err := DecodeOp(op.Encode())
		if err != nil {
			t.Fatalf("decode %+v: %v", op, err)
		}
		if got.Kind != op.Kind || !reflect.DeepEqual(got.Audit, op.Audit) || !reflect.DeepEqual(got.Digest, op.Digest) {
			t.Errorf("round trip %+v %+v %+v = %+v %+v %+v", op, op.Audit, op.Digest, got, got.Audit, got.Digest)
		}
	}
	long := Op{Kind: KindDigest, Digest: &DigestReport{Audit: 1, Skipped: strings.Repeat("x", 400)}}
	if got, err := DecodeOp(long.Encode()); err != nil || len(got.Digest.Skipped) != 255 {
		t.Errorf("long reason: %v, %v", got, err)
	}
}

func TestDecodeAuditEntriesBad(t *testing.T) {
	audit := Op{Kind: KindAudit, Audit: &AuditOp{AtMillis: 5, WindowMillis: 5, Voters: []uint64{1, 2}}}.Encode()
	digest := Op{Kind: KindDigest, Digest: &DigestReport{Audit: 1, Sum: sum(1), Keys: 3}}.Encode()
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"short AUDIT", audit[:10], "AUDIT payload"},
		{"AUDIT voters cut", audit[:len(audit)-1], "AUDIT voter list"},
		{"AUDIT trailing", append(append([]byte{}, audit...), 9), "AUDIT with 1 trailing"},
		{"AUDIT voter 0", append(append([]byte{}, audit[:len(audit)-2]...), 0, 1), "AUDIT voter list"},
		{"short DIGEST", digest[:6], "DIGEST payload"},
		{"DIGEST sum cut", digest[:20], "DIGEST sum"},
		{"DIGEST trailing", append(append([]byte{}, digest...), 1), "DIGEST key count"},
		{"DIGEST unknown status", []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 1, 7}, "DIGEST status 7"},
		{"DIGEST empty reason", []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0}, "DIGEST reason"},
		{"DIGEST reason overruns", []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 1, 1, 5, 'a'}, "DIGEST reason"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeOp(tc.in)
			if !errors.Is(err, ErrBadEntry) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrBadEntry containing %q", err, tc.want)
			}
		})
	}
}

func TestAuditDue(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name   string
		cfg    AuditConfig
		writes uint64
		since  time.Duration
		want   bool
	}{
		{"no writes, long ago", AuditConfig{Interval: time.Minute}, 0, time.Hour, false},
		{"writes, interval passed", AuditConfig{Interval: time.Minute}, 1, 2 * time.Minute, true},
		{"writes, interval not passed", AuditConfig{Interval: time.Minute, Every: 100}, 99, time.Second, false},
		{"every N entries", AuditConfig{Interval: time.Minute, Every: 100}, 100, time.Second, true},
		{"off", AuditConfig{Off: true, Every: 1}, 1000, time.Hour, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newAuditor(tc.cfg)
			a.writes.Store(tc.writes)
			a.lastAudit.Store(now.Add(-tc.since).UnixNano())
			if got := a.due(now); got != tc.want {
				t.Fatalf("due = %v, want %v", got, tc.want)
			}
		})
	}
}

// recordingOrderer keeps what was proposed (a unit-test fake of raft).
type recordingOrderer struct {
	mu    sync.Mutex
	props [][]byte
}

func (o *recordingOrderer) Propose(_ context.Context, p raftcore.Proposal) (raftcore.Result, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.props = append(o.props, p.Data)
	return raftcore.Result{}, nil
}
func (o *recordingOrderer) ReadIndex(context.Context) (uint64, error) { return 0, nil }

func (o *recordingOrderer) reports(t *testing.T) []DigestReport {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []DigestReport
	for _, b := range o.props {
		op, err := DecodeOp(b)
		if err != nil || op.Kind != KindDigest {
			t.Fatalf("proposed %v, %v; want DIGEST entries", op, err)
		}
		out = append(out, *op.Digest)
	}
	return out
}

// An app without a digest method (HTTP without the snapshot path), a
// replica whose app is unreachable, and an audit whose window has passed:
// the replica reports "skipped" with the reason (the first two), said
// once in the log, or ignores the old audit (the last).
func TestAuditSkips(t *testing.T) {
	now := time.Now().UnixMilli()
	tests := []struct {
		name    string
		port    Port
		at      int64
		want    string // in every report's Skipped; "" = no report
		reports int
	}{
		{"http app without snapshot path", Port{8080, framing.ProtoHTTP}, now, "no digest method", 2},
		{"redis app unreachable", Port{6379, framing.ProtoRESP}, now, "connection refused", 2},
		{"audit window passed", Port{6379, framing.ProtoRESP}, now - time.Minute.Milliseconds(), "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			x, err := NewExecutor(ExecutorConfig{Group: "g", Self: 1, Ports: []Port{tc.port}, Dialer: failDialer{},
				Log: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer x.Close()
			o := &recordingOrderer{}
			x.reportTo(o)
			for i := range 2 {
				audit := Op{Kind: KindAudit, Audit: &AuditOp{AtMillis: tc.at, WindowMillis: 10000, Voters: []uint64{1, 2, 3}}}
				if _, err := x.Apply(raftcore.Entry{Index: uint64(i + 1), Data: audit.Encode()}); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "the reports", func() bool { return len(o.reports(t)) == tc.reports })
			for _, r := range o.reports(t) {
				if !strings.Contains(r.Skipped, tc.want) {
					t.Errorf("report %+v, want skipped for %q", r, tc.want)
				}
			}
			if n := strings.Count(logs.String(), "not digested"); tc.reports > 0 && n != 1 {
				t.Errorf("said %d times in the log, want once:\n%s", n, logs.String())
			}
			if x.Applied() != 2 {
				t.Errorf("applied %d, want 2", x.Applied())
			}
		})
	}
}
