package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
	"go.etcd.io/raft/v3/raftpb"
)

func TestFrameRoundTrip(t *testing.T) {
	in := frame{batches: []batch{
		{group: "a", msgs: []*raftpb.Message{{Type: raftpb.MsgApp.Enum(), To: new(uint64(2)), Entries: []*raftpb.Entry{{Index: new(uint64(7)), Data: []byte("x")}}}}},
		{group: "b-long-name", msgs: []*raftpb.Message{{Type: raftpb.MsgHeartbeat.Enum()}, {Type: raftpb.MsgVote.Enum()}}},
	}}
	b, err := in.marshal()
	if err != nil {
		t.Fatal(err)
	}
	var out frame
	if err := out.unmarshal(b); err != nil {
		t.Fatal(err)
	}
	if len(out.batches) != 2 || out.batches[0].group != "a" || len(out.batches[1].msgs) != 2 ||
		string(out.batches[0].msgs[0].GetEntries()[0].GetData()) != "x" {
		t.Fatalf("round trip mismatch: %+v", out.batches)
	}
}

func TestFrameBadInput(t *testing.T) {
	good, _ := (&frame{batches: []batch{{group: "g", msgs: []*raftpb.Message{{Type: raftpb.MsgApp.Enum()}}}}}).marshal()
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"bad version", []byte{9, 0}},
		{"truncated count", []byte{frameVersion}},
		{"truncated group", []byte{frameVersion, 1, 5, 'a'}},
		{"huge message count", []byte{frameVersion, 1, 1, 'g', 0xff, 0xff, 0x7f}},
		{"truncated message", good[:len(good)-1]},
		{"trailing bytes", append(append([]byte{}, good...), 0)},
		{"garbage message", []byte{frameVersion, 1, 1, 'g', 1, 3, 0xff, 0xff, 0xff}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var f frame
			if err := f.unmarshal(tc.b); !errors.Is(err, errBadFrame) {
				t.Fatalf("got %v, want errBadFrame", err)
			}
		})
	}
	if _, err := (codec{}).Marshal("not a frame"); err == nil {
		t.Fatal("codec accepted a string")
	}
}

func TestNewBadConfig(t *testing.T) {
	for _, cfg := range []Config{{QueueLen: -1}, {MaxFrameBytes: -1}, {PeerIdleTimeout: -1}, {Listen: "not-an-address"}} {
		if _, err := New(cfg); err == nil {
			t.Fatalf("config %+v accepted", cfg)
		}
	}
}

// Three nodes on loopback gRPC: a group orders writes; one node's whole
// transport restarts on the same port and the others reconnect.
func TestThreeNodesOverGRPC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type member struct {
		tr   *GRPC
		node *raftcore.Node
		g    *raftcore.Group
		kv   *kvtest.KV
		dir  string
	}
	ms := map[uint64]*member{}
	peers := map[uint64]string{}
	for id := uint64(1); id <= 3; id++ {
		tr, err := New(Config{Listen: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		peers[id] = tr.Addr()
		ms[id] = &member{tr: tr, dir: t.TempDir()}
	}
	start := func(id uint64) {
		m := ms[id]
		n, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: m.dir, Transport: m.tr, TickInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		m.node, m.kv = n, kvtest.NewKV()
		if m.g, err = n.StartGroup(raftcore.GroupConfig{Name: "kv", SelfID: id, Peers: peers}, m.kv); err != nil {
			t.Fatal(err)
		}
	}
	for id := uint64(1); id <= 3; id++ {
		start(id)
	}
	defer func() {
		for _, m := range ms {
			m.node.Close()
		}
	}()
	propose := func(via uint64, i int) {
		t.Helper()
		for {
			_, err := ms[via].g.Propose(ctx, raftcore.Proposal{Session: 1, Seq: uint64(i), Data: kvtest.Op{Kind: "put", Key: "k", Value: fmt.Sprint(i)}.Encode()})
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("propose %d via %d: %v", i, via, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i := 1; i <= 50; i++ {
		propose(uint64(i%3+1), i)
	}
	// Restart node 3's process-level pieces: transport (same port) and node.
	ms[3].node.Close()
	tr, err := New(Config{Listen: peers[3]})
	if err != nil {
		t.Fatal(err)
	}
	ms[3].tr = tr
	start(3)
	for i := 51; i <= 100; i++ {
		propose(uint64(i%3+1), i)
	}
	for id, m := range ms {
		if _, err := m.g.ReadIndex(ctx); err != nil {
			t.Fatalf("read index on %d: %v", id, err)
		}
		if got := m.kv.Get("k"); got != "100" {
			t.Fatalf("member %d: k=%q want 100", id, got)
		}
	}
}

type countingHandler struct{ unreachable chan uint64 }

func (h countingHandler) Deliver(string, []*raftpb.Message) {}
func (h countingHandler) ReportUnreachable(_ string, to uint64) {
	select {
	case h.unreachable <- to:
	default:
	}
}
func (h countingHandler) ReportSnapshot(string, uint64, bool) {}

// Messages to an address nobody listens on are reported unreachable, and
// the peer retires once unused (no goroutine per stale address).
func TestUnreachablePeerReportedAndRetired(t *testing.T) {
	h := countingHandler{unreachable: make(chan uint64, 16)}
	tr := startTransport(t, Config{PeerIdleTimeout: 50 * time.Millisecond}, h)
	dead := "127.0.0.1:1" // nothing listens on port 1
	tr.Send("g", 7, dead, []*raftpb.Message{{Type: raftpb.MsgHeartbeat.Enum(), To: new(uint64(7))}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	select {
	case to := <-h.unreachable:
		if to != 7 {
			t.Fatalf("unreachable reported for %d", to)
		}
	case <-ctx.Done():
		t.Fatal("drop never reported")
	}
	for {
		tr.mu.Lock()
		n := len(tr.pmap)
		tr.mu.Unlock()
		if n == 0 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("idle peer not retired")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type deliverHandler struct{ got chan string }

func (h deliverHandler) Deliver(group string, _ []*raftpb.Message) {
	select {
	case h.got <- group:
	default:
	}
}
func (h deliverHandler) ReportUnreachable(string, uint64)    {}
func (h deliverHandler) ReportSnapshot(string, uint64, bool) {}

// A listener opened by the caller (inside a pod's netns in smr-cri serve) is
// served as is; Listen and Listener together are refused; Close closes a
// listener that was never served.
func TestCallerListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Listen: "127.0.0.1:0", Listener: ln}); err == nil {
		t.Fatal("Listen and Listener together accepted")
	}
	h := deliverHandler{got: make(chan string, 1)}
	srv := startTransport(t, Config{Listener: ln}, h)
	if srv.Addr() != ln.Addr().String() {
		t.Fatalf("Addr %q, want %q", srv.Addr(), ln.Addr())
	}
	cli := startTransport(t, Config{}, countingHandler{unreachable: make(chan uint64, 16)})
	sendAndExpect(t, cli, srv, h)

	unused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := New(Config{Listener: unused})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := unused.Accept(); err == nil {
		t.Fatal("listener still open after Close without Start")
	}
}

// A caller's Dialer (inside a pod's netns in smr-cri serve) opens the peer
// connections: it is called with the peer's address and its connection carries
// the messages.
func TestCallerDialer(t *testing.T) {
	h := deliverHandler{got: make(chan string, 1)}
	srv := startTransport(t, Config{Listen: "127.0.0.1:0"}, h)
	dialed := make(chan string, 16)
	cli := startTransport(t, Config{Dialer: func(ctx context.Context, addr string) (net.Conn, error) {
		dialed <- addr
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}, countingHandler{unreachable: make(chan uint64, 16)})
	sendAndExpect(t, cli, srv, h)
	if got := <-dialed; got != srv.Addr() {
		t.Fatalf("dialer called with %q, want %q", got, srv.Addr())
	}
}

// startTransport creates a transport from cfg and starts it with h; it is
// closed when the test ends.
func startTransport(t *testing.T, cfg Config, h raftcore.Handler) *GRPC {
	t.Helper()
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Start(h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// sendAndExpect sends one heartbeat of group g1 from cli to srv and waits for
// srv's handler to deliver it.
func sendAndExpect(t *testing.T, cli, srv *GRPC, h deliverHandler) {
	t.Helper()
	cli.Send("g1", 1, srv.Addr(), []*raftpb.Message{{Type: raftpb.MsgHeartbeat.Enum()}})
	select {
	case g := <-h.got:
		if g != "g1" {
			t.Fatalf("delivered group %q, want g1", g)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("message not delivered")
	}
}
