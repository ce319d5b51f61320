package replication

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/appstate"
	"github.com/smr-io/smr-cri/replication/connstate"
	"github.com/smr-io/smr-cri/replication/framing"
)

// v1Sessions renders the sessions part of an SMREXEC1 snapshot.
func v1Sessions(sessions ...[4]uint64) []byte {
	b := binary.AppendUvarint([]byte(execSnapMagicV1), uint64(len(sessions)))
	for _, s := range sessions {
		proto := framing.ProtoRESP
		if s[3] == 1 {
			proto = framing.ProtoHTTP
		}
		for _, v := range []uint64{s[0], s[1], s[2], uint64(len(proto))} {
			b = binary.AppendUvarint(b, v)
		}
		b = append(b, proto...)
	}
	return b
}

// Snapshots of both formats are read; sessions of an SMREXEC1 snapshot have
// no recorded state, so their RESP sessions cannot be rebuilt (ended), and
// sessions of ports this group does not replicate are dropped. Damaged
// session parts are refused with appstate.ErrBadStream.
func TestReadSnapshotSessions(t *testing.T) {
	tr := connstate.New()
	tr.Open(5, 1, 6379, framing.ProtoRESP)
	good, _ := tr.MarshalBinary()
	v2 := binary.AppendUvarint([]byte(execSnapMagic), uint64(len(good)))
	v2 = append(v2, good...)
	ports := []Port{respPort, {Number: 8080, Protocol: framing.ProtoHTTP}}
	for _, tc := range []struct {
		name    string
		in      []byte
		wantErr bool
		check   func(*connstate.Tracker) string
	}{
		{name: "v2", in: v2, check: func(t *connstate.Tracker) string {
			if s, ok := t.Session(5); !ok || s.Origin != 1 {
				return "session 5 missing"
			}
			return ""
		}},
		{name: "v1", in: v1Sessions([4]uint64{7, 2, 6379, 0}, [4]uint64{8, 2, 8080, 1}, [4]uint64{9, 2, 7000, 0}), check: func(t *connstate.Tracker) string {
			if t.Len() != 2 {
				return "want the two sessions of replicated ports"
			}
			resp, _ := t.Session(7)
			if _, _, err := resp.Rebuild(); !errors.Is(err, connstate.ErrNotRebuildable) || !strings.Contains(err.Error(), "older smr-cri") {
				return "v1 RESP session: " + errString(err)
			}
			http, _ := t.Session(8)
			if _, _, err := http.Rebuild(); err != nil {
				return "v1 HTTP session: " + err.Error()
			}
			return ""
		}},
		{name: "not a snapshot", in: []byte("SMREXEC9xx"), wantErr: true},
		{name: "truncated magic", in: []byte("SMR"), wantErr: true},
		{name: "v2 length beyond data", in: append([]byte(execSnapMagic), 50, 1), wantErr: true},
		{name: "v2 damaged tracker", in: append([]byte(execSnapMagic), 2, 9, 9), wantErr: true},
		{name: "v1 truncated record", in: v1Sessions([4]uint64{7, 2, 6379, 0})[:12], wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readSnapshotSessions(bufio.NewReader(bytes.NewReader(tc.in)), ports)
			if tc.wantErr {
				if !errors.Is(err, appstate.ErrBadStream) {
					t.Fatalf("err = %v, want ErrBadStream", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if msg := tc.check(got); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// Entries at or below the index of the snapshot the tracker was restored
// from are in it already: a restart that restored a snapshot and then
// skips entries up to its resume point must not feed them twice (an open
// transaction would hold its queued commands twice).
func TestTrackerFloor(t *testing.T) {
	x, err := NewExecutor(ExecutorConfig{Group: "g", Self: 2, Ports: []Port{respPort}, Dialer: failDialer{}})
	if err != nil {
		t.Fatal(err)
	}
	entry := func(idx uint64, op Op) raftcore.Entry {
		return raftcore.Entry{Group: "g", Index: idx, Session: 7, Origin: 1, Data: op.Encode()}
	}
	prefix := []raftcore.Entry{
		entry(1, Op{Kind: KindOpen, Port: respPort.Number, Protocol: respPort.Protocol}),
		entry(2, request("MULTI")),
		entry(3, request("SET", "k", "v")),
	}
	describe := func() string {
		x.cmu.Lock()
		defer x.cmu.Unlock()
		s, ok := x.conns.Session(7)
		if !ok {
			return "closed"
		}
		return s.Describe()
	}
	for _, e := range prefix {
		x.TrackSkipped(e)
	}
	if got := describe(); got != "MULTI +1 queued" {
		t.Fatalf("after the prefix: %q", got)
	}
	x.cmu.Lock()
	x.connsFloor = 3 // as RestoreFrom(3, ...) sets it
	x.cmu.Unlock()
	for _, e := range prefix {
		x.TrackSkipped(e)
	}
	if got := describe(); got != "MULTI +1 queued" {
		t.Fatalf("entries below the floor were fed again: %q", got)
	}
	x.TrackSkipped(entry(4, request("INCR", "n")))
	if got := describe(); got != "MULTI +2 queued" {
		t.Fatalf("after an entry above the floor: %q", got)
	}
}

// The origin orders AUTHOK only after an AUTH, or a HELLO with its AUTH
// option, that the app accepted.
func TestAuthAccepted(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		val  string
		want bool
	}{
		{"auth ok", []string{"AUTH", "pw"}, "+OK\r\n", true},
		{"auth user ok", []string{"AUTH", "alice", "pw"}, "+OK\r\n", true},
		{"auth refused", []string{"AUTH", "pw"}, "-WRONGPASS invalid username-password pair\r\n", false},
		{"auth without reply", []string{"AUTH", "pw"}, "", false},
		{"hello auth ok", []string{"HELLO", "3", "AUTH", "default", "pw"}, "%7\r\n", true},
		{"hello auth and name", []string{"HELLO", "3", "SETNAME", "n", "AUTH", "u", "pw"}, "*14\r\n", true},
		{"hello auth refused", []string{"HELLO", "3", "AUTH", "default", "pw"}, "-WRONGPASS x\r\n", false},
		{"hello without auth", []string{"HELLO", "3", "SETNAME", "n"}, "%7\r\n", false},
		{"other command", []string{"SET", "AUTH", "x"}, "+OK\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op := request(tc.args...)
			if got := authAccepted(framing.Request{Op: op.Name, Raw: op.Raw}, []byte(tc.val)); got != tc.want {
				t.Fatalf("authAccepted = %v, want %v", got, tc.want)
			}
		})
	}
}
