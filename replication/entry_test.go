package replication

import (
	"context"
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
)

func TestOpRoundTrip(t *testing.T) {
	for _, op := range []Op{
		{Kind: KindOpen, Port: 6379, Protocol: framing.ProtoRESP},
		{Kind: KindOpen, Port: 65535, Protocol: framing.ProtoHTTP},
		{Kind: KindRequest, Name: "SET", Raw: []byte("*1\r\n$4\r\nPING\r\n")},
		{Kind: KindRequest, Name: "", Raw: []byte("x")},
		{Kind: KindClose},
		{Kind: KindReset},
		{Kind: KindEnd, End: &EndOp{Session: 1<<63 | 5, Reason: "WATCH is active"}},
		{Kind: KindEnd, End: &EndOp{Session: 1}},
		{Kind: KindAuthOK},
	} {
		got, err := DecodeOp(op.Encode())
		if err != nil || !reflect.DeepEqual(got, op) {
			t.Errorf("round trip %+v = %+v, %v", op, got, err)
		}
	}
	// Long op names are truncated, never corrupt the payload.
	long := Op{Kind: KindRequest, Name: strings.Repeat("P", 300), Raw: []byte("raw")}
	got, err := DecodeOp(long.Encode())
	if err != nil || len(got.Name) != 255 || string(got.Raw) != "raw" {
		t.Errorf("long name: %+v %v", got, err)
	}
}

func TestDecodeOpBad(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "0 bytes"},
		{"future version", []byte{2, 1}, "version 2"},
		{"unknown kind", []byte{1, 9}, "unknown kind 9"},
		{"short OPEN", []byte{1, 1, 0}, "OPEN payload"},
		{"OPEN bad protocol", append([]byte{1, 1, 0, 80, 4}, "grpc"...), `OPEN protocol "grpc"`},
		{"OPEN length mismatch", append([]byte{1, 1, 0, 80, 9}, "http"...), "OPEN payload"},
		{"REQUEST name overruns", []byte{1, 2, 5, 'a'}, "REQUEST payload"},
		{"empty REQUEST", []byte{1, 2, 1, 'a'}, "empty REQUEST"},
		{"CLOSE with trailing bytes", []byte{1, 3, 0}, "trailing"},
		{"short END", []byte{1, 7, 0, 0, 0}, "END payload"},
		{"AUTHOK with trailing bytes", []byte{1, 8, 0}, "trailing"},
		{"END reason overruns", []byte{1, 7, 0, 0, 0, 0, 0, 0, 0, 1, 3, 'a'}, "END payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeOp(tt.in)
			if !errors.Is(err, ErrBadEntry) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrBadEntry containing %q", err, tt.want)
			}
		})
	}
}

// failDialer never reaches an app.
type failDialer struct{}

func (failDialer) DialApp(ctx context.Context, port int) (net.Conn, error) {
	return nil, errors.New("connection refused")
}

func TestExecutorEntryErrors(t *testing.T) {
	x, err := NewExecutor(ExecutorConfig{Group: "g", Self: 1, Ports: []Port{{6379, framing.ProtoRESP}}, Dialer: failDialer{}})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	// An undecodable entry is an error for the proposer, and still applied.
	if _, err := x.Apply(raftcore.Entry{Index: 1, Data: []byte{7}}); !errors.Is(err, ErrBadEntry) {
		t.Errorf("bad entry: %v", err)
	}
	if x.Applied() != 1 {
		t.Errorf("applied = %d, want 1", x.Applied())
	}
	tests := []struct {
		name string
		op   Op
		want string
	}{
		{"request without session", Op{Kind: KindRequest, Name: "GET", Raw: []byte("GET a\r\n")}, "-ERR smr-cri: replication unavailable: session 5 is not open"},
		{"port not replicated", Op{Kind: KindOpen, Port: 80, Protocol: framing.ProtoHTTP}, "HTTP/1.1 501 Not Implemented"},
		{"close of unknown session", Op{Kind: KindClose}, ""},
	}
	for i, tt := range tests {
		val, err := x.Apply(raftcore.Entry{Index: uint64(i + 2), Session: 5, Seq: uint64(i + 1), Data: tt.op.Encode()})
		if err != nil || !strings.HasPrefix(string(val), tt.want) || (tt.want == "" && val != nil) {
			t.Errorf("%s: %q, %v; want prefix %q", tt.name, val, err, tt.want)
		}
	}
}

func TestExecutorConfigRequired(t *testing.T) {
	if _, err := NewExecutor(ExecutorConfig{Group: "g"}); err == nil {
		t.Fatal("want an error for a config without Self, Ports and Dialer")
	}
	if _, err := NewServer(ServerConfig{}); err == nil {
		t.Fatal("want an error for a server without Orderer and Exec")
	}
}

// While the app is unreachable entries queue (bounded); past the bound the
// replica declares itself diverged instead of silently skipping entries.
func TestExecutorQueueOverflowDiverges(t *testing.T) {
	x, err := NewExecutor(ExecutorConfig{Group: "g", Self: 1, Ports: []Port{{6379, framing.ProtoRESP}}, Dialer: failDialer{},
		AppWait: time.Millisecond, MaxQueue: 2, RetryInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	// A RESP session's OPEN does not dial (sessions share the pipelined
	// connection until they have state): its requests find the app down.
	open := Op{Kind: KindOpen, Port: 6379, Protocol: framing.ProtoRESP}.Encode()
	if val, err := x.Apply(raftcore.Entry{Index: 1, Session: 1, Seq: 1, Data: open}); err != nil || val != nil {
		t.Fatalf("OPEN: %q, %v", val, err)
	}
	set := Op{Kind: KindRequest, Name: "SET", Raw: []byte("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")}.Encode()
	want := []string{"queued", "queued", "restart the pod"}
	for i, w := range want {
		val, err := x.Apply(raftcore.Entry{Index: uint64(i + 2), Session: 1, Seq: uint64(i + 2), Data: set})
		if err != nil || !strings.HasPrefix(string(val), "-ERR smr-cri:") || !strings.Contains(string(val), w) {
			t.Errorf("entry %d: %q, %v; want %q", i+1, val, err, w)
		}
	}
	if err := x.Health(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "restart the pod") {
		t.Errorf("Health = %v", err)
	}
}

// Any bytes in a log entry decode to an Op or ErrBadEntry, never a panic,
// and a decoded Op encodes back to an equal one.
func FuzzDecodeOp(f *testing.F) {
	for _, op := range []Op{
		{Kind: KindOpen, Port: 6379, Protocol: framing.ProtoRESP},
		{Kind: KindRequest, Name: "SET", Raw: []byte("*1\r\n$4\r\nPING\r\n")},
		{Kind: KindClose},
		{Kind: KindAudit, Audit: &AuditOp{AtMillis: 1, WindowMillis: 2, Voters: []uint64{1, 300}}},
		{Kind: KindDigest, Digest: &DigestReport{Audit: 3, Sum: [32]byte{1}, Keys: 4}},
		{Kind: KindDigest, Digest: &DigestReport{Audit: 3, Skipped: "late"}},
	} {
		f.Add(op.Encode())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := DecodeOp(b)
		if err != nil {
			if !errors.Is(err, ErrBadEntry) {
				t.Fatalf("error %v is not ErrBadEntry", err)
			}
			return
		}
		again, err := DecodeOp(op.Encode())
		if err != nil || !reflect.DeepEqual(again, op) {
			t.Fatalf("re-encoded %+v decodes to %+v, %v", op, again, err)
		}
	})
}
