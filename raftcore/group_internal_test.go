package raftcore

import (
	"fmt"
	"testing"
)

// An entry replayed from an earlier incarnation that happens to carry the
// same proposal id must not resolve a new waiter.
func TestFinishEntryOnlyResolvesOwnProposal(t *testing.T) {
	g := &Group{props: map[uint64]*proposal{}}
	pr := &proposal{pid: 7, data: envelope{Origin: 1, PID: 7, Data: []byte("new")}.marshal(), done: make(chan propResult, 1)}
	g.props[7] = pr
	tests := []struct {
		name    string
		data    []byte
		resolve bool
	}{
		{"replayed entry with same pid", envelope{Origin: 1, PID: 7, Data: []byte("old")}.marshal(), false},
		{"own entry", pr.data, true},
	}
	for _, tc := range tests {
		g.finishEntry(7, tc.data, Result{Index: 1}, nil)
		select {
		case <-pr.done:
			if !tc.resolve {
				t.Fatalf("%s: waiter resolved", tc.name)
			}
		default:
			if tc.resolve {
				t.Fatalf("%s: waiter not resolved", tc.name)
			}
		}
	}
}

func TestEnvelopeAndSnapshotStateRoundTrip(t *testing.T) {
	e := envelope{Origin: 3, PID: 1 << 60, Session: 9, Seq: 12, Data: []byte("payload")}
	got, err := unmarshalEnvelope(e.marshal())
	if err != nil || got.Origin != 3 || got.PID != 1<<60 || got.Session != 9 || got.Seq != 12 || string(got.Data) != "payload" {
		t.Fatalf("envelope round trip: %+v %v", got, err)
	}
	for _, bad := range [][]byte{nil, {2}, {envelopeVersion, 0xff}} {
		if _, err := unmarshalEnvelope(bad); err == nil {
			t.Fatalf("bad envelope %v accepted", bad)
		}
	}
	st := snapshotState{
		Sessions: map[uint64]sessionResult{5: {Seq: 2, Index: 10, Term: 1, Value: []byte("v"), ErrMsg: "e"}},
		Addrs:    map[uint64]string{1: "a", 2: "b"},
		SM:       []byte("sm"),
	}
	got2, err := unmarshalSnapshotState(st.marshal())
	if err != nil || got2.Sessions[5].ErrMsg != "e" || got2.Addrs[2] != "b" || string(got2.SM) != "sm" {
		t.Fatalf("snapshot state round trip: %+v %v", got2, err)
	}
	if _, err := unmarshalSnapshotState([]byte{9}); err == nil {
		t.Fatal("bad snapshot version accepted")
	}
	if _, err := unmarshalSnapshotState(st.marshal()[:5]); err == nil {
		t.Fatal("truncated snapshot state accepted")
	}
}

func TestBatchRoundTripAndBadInput(t *testing.T) {
	envs := [][]byte{envelope{PID: 1, Data: []byte("a")}.marshal(), envelope{PID: 2, Data: []byte("bb")}.marshal()}
	b := marshalBatch(envs, 0)
	got, err := unmarshalBatch(b)
	if err != nil || len(got) != 2 || string(got[1]) != string(envs[1]) {
		t.Fatalf("batch round trip: %q %v", got, err)
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"not a batch", envs[0]},
		{"huge count", []byte{batchVersion, 0xff, 0xff, 0x03}},
		{"truncated", b[:len(b)-1]},
		{"trailing", append(append([]byte{}, b...), 0)},
	}
	for _, tc := range tests {
		if _, err := unmarshalBatch(tc.b); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestSweepSessions(t *testing.T) {
	tests := []struct {
		name      string
		applied   uint64
		index     uint64
		retention uint64
		want      []uint64 // sessions left
	}{
		{"no boundary crossed", 5000, 5001, 100, []uint64{1, 2}},
		{"boundary crossed: idle session forgotten", 8191, 8192, 1000, []uint64{2}},
		{"within retention of the start", 4095, 4096, 1 << 20, []uint64{1, 2}},
	}
	for _, tc := range tests {
		a := &applier{applied: tc.applied, sessions: map[uint64]sessionResult{
			1: {Seq: 1, Index: 10},
			2: {Seq: 1, Index: 8000},
		}}
		a.sweepSessions(tc.index, tc.retention)
		if len(a.sessions) != len(tc.want) {
			t.Fatalf("%s: sessions left %v, want %v", tc.name, a.sessions, tc.want)
		}
		for _, id := range tc.want {
			if _, ok := a.sessions[id]; !ok {
				t.Fatalf("%s: session %d was forgotten", tc.name, id)
			}
		}
	}
}

func TestEnvelopeFlags(t *testing.T) {
	tests := []struct {
		name  string
		flags uint64
		want  byte // version byte written
	}{
		{"no flags keeps the version 1 layout", 0, envelopeVersion},
		{"end session", envEndSession, envelopeFlagsVersion},
		{"end origin sessions", envEndOriginSessions, envelopeFlagsVersion},
	}
	for _, tc := range tests {
		b := envelope{Origin: 2, PID: 7, Session: 9, Seq: 3, Flags: tc.flags, Data: []byte("x")}.marshal()
		if b[0] != tc.want {
			t.Errorf("%s: version byte %d, want %d", tc.name, b[0], tc.want)
		}
		got, err := unmarshalEnvelope(b)
		if err != nil || got.Flags != tc.flags || got.Seq != 3 || string(got.Data) != "x" {
			t.Errorf("%s: round trip %+v %v", tc.name, got, err)
		}
	}
	// Unknown flag bits come from a newer or corrupt writer: refuse them.
	bad := []byte{envelopeFlagsVersion, 1, 1, 1, 1, 0x40}
	if _, err := unmarshalEnvelope(bad); err == nil {
		t.Fatal("unknown envelope flags accepted")
	}
	if _, err := unmarshalEnvelope([]byte{envelopeFlagsVersion, 1, 1, 1, 1}); err == nil {
		t.Fatal("envelope with truncated flags accepted")
	}
}

// Version 1 snapshots (no session origin) written by an older smr-cri still load.
func TestSnapshotStateV1(t *testing.T) {
	v1 := []byte{snapshotVersionV1, 1, 5, 2, 10, 1, 1, 'v', 0, 0, 0}
	st, err := unmarshalSnapshotState(v1)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.Sessions[5]; r.Seq != 2 || r.Index != 10 || string(r.Value) != "v" || r.Origin != 0 {
		t.Fatalf("v1 session decoded as %+v", r)
	}
	st.Sessions[5] = sessionResult{Origin: 3, EndedAt: 8, Seq: 2}
	got, err := unmarshalSnapshotState(st.marshal())
	if err != nil || got.Sessions[5].Origin != 3 || got.Sessions[5].EndedAt != 8 {
		t.Fatalf("v2 keeps the origin and end: %+v %v", got.Sessions[5], err)
	}
}

func TestEndSessions(t *testing.T) {
	tests := []struct {
		name  string
		env   envelope
		ended []uint64 // sessions that became tombstones
	}{
		{"no flag", envelope{Origin: 1, Session: 10}, nil},
		{"end one session", envelope{Origin: 1, Session: 10, Flags: envEndSession}, []uint64{10}},
		{"end an unknown session", envelope{Origin: 1, Session: 99, Flags: envEndSession}, nil},
		{"end every session of origin 1", envelope{Origin: 1, Flags: envEndOriginSessions}, []uint64{10, 11}},
	}
	for _, tc := range tests {
		a := &applier{sessions: map[uint64]sessionResult{
			10: {Origin: 1, Seq: 1}, 11: {Origin: 1, Seq: 4}, 20: {Origin: 2, Seq: 2},
		}}
		a.endSessions(tc.env, 100)
		var ended []uint64
		for _, e := range a.ended {
			ended = append(ended, e.id)
			if a.sessions[e.id].EndedAt != 100 {
				t.Errorf("%s: session %d EndedAt=%d, want 100", tc.name, e.id, a.sessions[e.id].EndedAt)
			}
		}
		if fmt.Sprint(ended) != fmt.Sprint(tc.ended) {
			t.Fatalf("%s: tombstones %v, want %v", tc.name, ended, tc.ended)
		}
		// Within the grace the tombstones stay; after it they are gone and
		// the live sessions are untouched.
		a.expireEnded(110, 10)
		if len(a.sessions) != 3 {
			t.Fatalf("%s: %d sessions left within the grace, want 3", tc.name, len(a.sessions))
		}
		a.expireEnded(111, 10)
		if len(a.sessions) != 3-len(tc.ended) || len(a.ended) != 0 {
			t.Fatalf("%s: after the grace %v left (tombstones %v)", tc.name, a.sessions, a.ended)
		}
	}
}

// A tombstone refuses late copies of the session's proposals; one reused
// after its end is not expired by the old end.
func TestEndedSessionTombstone(t *testing.T) {
	a := &applier{sessions: map[uint64]sessionResult{7: {Origin: 1, Seq: 3, Value: []byte("v")}}}
	a.endSessions(envelope{Origin: 1, Session: 7, Flags: envEndSession}, 50)
	a.sessions[7] = sessionResult{Origin: 1, Seq: 4} // used again at a later seq
	a.expireEnded(1000, 10)
	if _, ok := a.sessions[7]; !ok {
		t.Fatal("the old end expired a session used again after it")
	}
	// A restored table lists its tombstones in log order.
	got := endedFromTable(map[uint64]sessionResult{1: {EndedAt: 9}, 2: {}, 3: {EndedAt: 4}, 4: {EndedAt: 9}})
	if fmt.Sprint(got) != "[{4 3} {9 1} {9 4}]" {
		t.Fatalf("tombstones from a restored table: %v", got)
	}
}

// Version 2 snapshots (state machine bytes inline), written before state
// files existed, still load; version 3 carries a state file reference.
func TestSnapshotStateV2AndStateRef(t *testing.T) {
	v2 := []byte{snapshotVersionV2, 1, 5, 3, 0, 2, 10, 1, 1, 'v', 0, 1, 1, 1, 'a', 2, 's', 'm'}
	st, err := unmarshalSnapshotState(v2)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.Sessions[5]; r.Origin != 3 || r.Seq != 2 || r.Index != 10 || string(r.Value) != "v" || st.Addrs[1] != "a" || string(st.SM) != "sm" || st.Ext != nil {
		t.Fatalf("v2 decoded as %+v", st)
	}
	st.SM, st.Ext = nil, &stateRef{Size: 12345, Sum: [32]byte{1, 2, 3}}
	got, err := unmarshalSnapshotState(st.marshal())
	if err != nil || got.Ext == nil || *got.Ext != *st.Ext || got.Sessions[5].Origin != 3 {
		t.Fatalf("v3 with a state reference: %+v %v", got, err)
	}
	for _, bad := range [][]byte{{snapshotVersion}, {snapshotVersion, 7}, {snapshotVersion, 1, 5, 1, 2}} {
		if _, err := unmarshalSnapshotState(bad); err == nil {
			t.Errorf("bad v3 snapshot %v accepted", bad)
		}
	}
}
