package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// learnHandler is a recHandler that also records LearnPeerAddr calls.
type learnHandler struct {
	*recHandler
	mu      sync.Mutex
	learned []string // "group/member=addr"
}

func (h *learnHandler) LearnPeerAddr(group string, member uint64, addr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.learned = append(h.learned, fmt.Sprintf("%s/%d=%s", group, member, addr))
}

func (h *learnHandler) learnedList() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.learned...)
}

var _ raftcore.PeerAddrLearner = (*learnHandler)(nil)

func TestCheckAdvertise(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"198.18.0.7:7480", true},
		{"[fd00::7]:7480", true},
		{"redis-0.redis.default.svc:7480", true},
		{"198.18.0.7", false},
		{"198.18.0.7:0", false},
		{"198.18.0.7:65536", false},
		{"198.18.0.7:http", false},
		{":7480", false},
		{"bad host:7480", false},
		{"bad\x00host:7480", false},
		{strings.Repeat("a", 251) + ":7480", false},
		{"", false},
	}
	for _, tc := range tests {
		err := checkAdvertise(tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("checkAdvertise(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errBadAdvertise) {
			t.Errorf("checkAdvertise(%q): %v is not errBadAdvertise", tc.addr, err)
		}
	}
	if _, err := New(Config{Advertise: "no-port"}); !errors.Is(err, errBadAdvertise) {
		t.Fatalf("New with a bad Advertise: %v", err)
	}
	for _, c := range []struct{ listen, want string }{{"127.0.0.1:0", "127.0.0.1:"}, {"0.0.0.0:0", ""}, {"", ""}} {
		tr, err := New(Config{Listen: c.listen})
		if err != nil {
			t.Fatal(err)
		}
		if got := tr.advertise; (c.want == "" && got != "") || !strings.HasPrefix(got, c.want) {
			t.Errorf("listen %q advertises %q, want %q...", c.listen, got, c.want)
		}
		tr.Close()
	}
}

// Member 1 of group kv serves; senders with various identities announce an
// address. Only an announcement on a stream whose frames the server
// authorized is passed to raft, and only for the member the certificate
// proves; a rogue or mismatched identity never changes an address. Without
// TLS the announced host must be the stream's source.
func TestAddressLearning(t *testing.T) {
	mk := memberTLS(t)
	member := func(g string, id uint64) *tls.Config { return mk(pki.Identity{Group: g, Member: id}) }
	const moved = "198.18.7.2:7480"
	tests := []struct {
		name      string
		secure    bool
		cli       *tls.Config // sender's (secure only)
		from      uint64
		announce  string
		delivered bool
		wantLog   string // a server log line expected
		learned   []string
	}{
		{"member announces its address", true, member("kv", 2), 2, moved, true, "", []string{"kv/2=" + moved}},
		{"member announces nothing", true, member("kv", 2), 2, "", true, "", nil},
		{"member claims another member", true, member("kv", 2), 3, moved, false, "member id mismatch", nil},
		{"member of another group", true, member("web", 2), 2, moved, false, "is not valid for group kv", nil},
		{"malformed announcement", true, member("kv", 2), 2, "198.18.7.2", true, "ignoring the address a peer announced", nil},
		{"plaintext from the announced host", false, nil, 2, "127.0.0.1:7480", true, "", []string{"kv/2=127.0.0.1:7480"}},
		{"plaintext from another host", false, nil, 2, moved, true, "must be the stream's source address", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &learnHandler{recHandler: newRecHandler()}
			logs := make(logLines, 256)
			scfg := Config{Listen: "127.0.0.1:0", Logger: sloggerTo(logs)}
			ccfg := Config{}
			if tc.secure {
				scfg.TLS, scfg.AuthorizePeer = member("kv", 1), pki.Authorize
				ccfg.TLS, ccfg.AuthorizePeer = tc.cli, pki.Authorize
			}
			srv := startTransport(t, scfg, h)
			cli := startTransport(t, ccfg, newRecHandler())
			cli.advertise = tc.announce // bypasses New's check: a rogue sender's header
			cli.Send("kv", 1, srv.Addr(), heartbeat(tc.from, 1))
			if tc.wantLog != "" {
				logs.waitFor(t, tc.wantLog)
			}
			if tc.delivered {
				<-h.got // learning happens before delivery
			}
			srv.Close() // drains the server: nothing is still on its way
			if !tc.delivered && h.count() != 0 {
				t.Fatalf("%d messages reached raft", h.count())
			}
			if got := h.learnedList(); fmt.Sprint(got) != fmt.Sprint(tc.learned) {
				t.Fatalf("learned %v, want %v", got, tc.learned)
			}
		})
	}
}

// A live stream passes its member's address on again (relearnEvery), so a
// stale report that overrode it is corrected while the member talks.
func TestAddressRelearnedOnLiveStream(t *testing.T) {
	h := &learnHandler{recHandler: newRecHandler()}
	srv := startTransport(t, Config{Listen: "127.0.0.1:0"}, h)
	cli := startTransport(t, Config{Advertise: "127.0.0.1:7480"}, newRecHandler())
	deadline := time.Now().Add(20 * time.Second) // failure bound only
	for len(h.learnedList()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("learned %v on a stream that kept sending", h.learnedList())
		}
		cli.Send("kv", 1, srv.Addr(), heartbeat(2, 1))
		<-h.got
		time.Sleep(50 * time.Millisecond)
	}
}

// Which senders of a frame are passed on, and how often, on a clock the
// test moves.
func TestStreamLearnerRate(t *testing.T) {
	h := &learnHandler{recHandler: newRecHandler()}
	var now time.Time
	l := &streamLearner{t: &GRPC{learner: h}, addr: "198.18.7.2:7480", last: map[learnKey]time.Time{}, now: func() time.Time { return now }}
	fr := func(group string, from ...uint64) *frame {
		b := batch{group: group}
		for _, f := range from {
			b.msgs = append(b.msgs, heartbeat(f, 1)...)
		}
		return &frame{batches: []batch{b}}
	}
	start := time.Unix(1000, 0)
	steps := []struct {
		at   time.Duration
		f    *frame
		want []string // new learn calls
	}{
		{0, fr("kv", 2, 2, 2), []string{"kv/2"}},
		{relearnEvery / 2, fr("kv", 2), nil},
		{relearnEvery / 2, fr("web", 2), []string{"web/2"}},
		{relearnEvery / 2, fr("kv", 0), nil}, // no sender
		{relearnEvery, fr("kv", 2), []string{"kv/2"}},
		{relearnEvery, fr("kv", 2, 3, 2), []string{"kv/3"}},
	}
	seen := 0
	for i, s := range steps {
		now = start.Add(s.at)
		l.learn(s.f)
		got := h.learnedList()[seen:]
		seen += len(got)
		var want []string
		for _, w := range s.want {
			want = append(want, w+"="+l.addr)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("step %d: learned %v, want %v", i, got, want)
		}
	}
	// At most maxLearnKeys pairs are remembered per stream; beyond, new
	// pairs are not passed on (an unauthenticated sender cannot grow it).
	for id := uint64(100); len(l.last) < maxLearnKeys; id++ {
		l.learn(fr("kv", id))
	}
	before := len(h.learnedList())
	l.learn(fr("kv", 99999))
	if len(h.learnedList()) != before || len(l.last) != maxLearnKeys {
		t.Fatalf("learned beyond maxLearnKeys: %d keys", len(l.last))
	}
}

func sloggerTo(l logLines) *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// A member restarted on a new address (a node restart gives its pod a new
// IP) over the real gRPC transport with mutual TLS, as smr-cri serve runs
// it. Nobody calls SetPeerAddr for the move (the pod watch lags); the group
// must re-form from what the members tell each other on their streams.
func TestRestartedMemberOnNewAddress(t *testing.T) {
	tests := []struct {
		name string
		// restartPeers returns the restarted member 3's peers; watch is
		// whether members 1 and 2 are told 3's new address (the pod watch).
		restartPeers func(peers map[uint64]string) map[uint64]string
		watch        bool
	}{
		// The others learn 3's new address from 3's own streams.
		{"the others do not know the new address", func(p map[uint64]string) map[uint64]string { return p }, false},
		// 3 starts with a pending address for 2 (its pod had no IP in the
		// list); it learns 2's address when 2 dials it.
		{"the restarted member does not know a peer", func(p map[uint64]string) map[uint64]string {
			p[2] = "127.0.0.1:1"
			return p
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c := startTLSGroup(t)
			c.write(ctx, t, 1, "1")
			old := c.addr[3]
			c.stop(3)
			peers := map[uint64]string{}
			for id, a := range c.addr {
				peers[id] = a
			}
			c.start(t, 3, tc.restartPeers(peers)) // new transport, new port
			if c.addr[3] == old {
				t.Fatal("member 3 came back on its old address")
			}
			if tc.watch {
				c.groups[1].SetPeerAddr(3, c.addr[3])
				c.groups[2].SetPeerAddr(3, c.addr[3])
			}
			// Progress now needs members 2 and 3 to reach each other.
			c.stop(1)
			c.write(ctx, t, 2, "2")
			c.write(ctx, t, 3, "3")
			for _, id := range []uint64{2, 3} {
				other := 5 - id
				if got := c.groups[id].Status().Members[other]; got != c.addr[other] {
					t.Fatalf("member %d routes %d to %q, want %q", id, other, got, c.addr[other])
				}
			}
			if tc.watch {
				return
			}
			// A stale watch event (a pod update still showing the old
			// address) does not undo what member 2 learned.
			c.groups[2].SetPeerAddr(3, old)
			if got := c.groups[2].Status().Members[3]; got != c.addr[3] {
				t.Fatalf("stale report moved member 3 to %q", got)
			}
			c.write(ctx, t, 2, "4")
		})
	}
}

// tlsGroup is group kv with members 1..3 in this process, each on its own
// mutual-TLS gRPC transport with a certificate for its member ID and the
// membership check smr-cri serve uses.
type tlsGroup struct {
	ca     *pki.CA
	dirs   map[uint64]string
	addr   map[uint64]string
	nodes  map[uint64]*raftcore.Node
	groups map[uint64]*raftcore.Group
	seq    atomic.Uint64
}

func startTLSGroup(t *testing.T) *tlsGroup {
	t.Helper()
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &tlsGroup{ca: ca, dirs: map[uint64]string{}, addr: map[uint64]string{},
		nodes: map[uint64]*raftcore.Node{}, groups: map[uint64]*raftcore.Group{}}
	trs := map[uint64]*GRPC{}
	grps := map[uint64]*atomic.Pointer[raftcore.Group]{}
	for id := uint64(1); id <= 3; id++ {
		c.dirs[id] = t.TempDir()
		trs[id], grps[id] = c.transport(t, id)
		c.addr[id] = trs[id].Addr()
	}
	for id := uint64(1); id <= 3; id++ {
		c.startOn(t, id, trs[id], grps[id], c.addr)
	}
	t.Cleanup(func() {
		for id := range c.nodes {
			c.stop(id)
		}
	})
	return c
}

func (c *tlsGroup) transport(t *testing.T, id uint64) (*GRPC, *atomic.Pointer[raftcore.Group]) {
	t.Helper()
	grp := &atomic.Pointer[raftcore.Group]{}
	m, err := pki.NewMember(c.ca, []pki.Identity{{Group: "kv", Member: id}}, 0, raftcore.MemberCheck(grp, "kv", time.Second))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := New(Config{Listen: "127.0.0.1:0", TLS: m.TLS, AuthorizePeer: m.Authorize})
	if err != nil {
		t.Fatal(err)
	}
	return tr, grp
}

// start (re)starts member id on a new transport with the given peers.
func (c *tlsGroup) start(t *testing.T, id uint64, peers map[uint64]string) {
	t.Helper()
	tr, grp := c.transport(t, id)
	c.addr[id] = tr.Addr()
	peers[id] = tr.Addr()
	c.startOn(t, id, tr, grp, peers)
}

func (c *tlsGroup) startOn(t *testing.T, id uint64, tr *GRPC, grp *atomic.Pointer[raftcore.Group], peers map[uint64]string) {
	t.Helper()
	n, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: c.dirs[id], Transport: tr, TickInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	g, err := n.StartGroup(raftcore.GroupConfig{Name: "kv", SelfID: id, Peers: peers}, kvtest.NewKV())
	if err != nil {
		t.Fatal(err)
	}
	grp.Store(g)
	c.nodes[id], c.groups[id] = n, g
}

func (c *tlsGroup) stop(id uint64) {
	if n := c.nodes[id]; n != nil {
		n.Close()
	}
	delete(c.nodes, id)
}

// write commits a put through member via, retrying through elections until
// ctx ends.
func (c *tlsGroup) write(ctx context.Context, t *testing.T, via uint64, v string) {
	t.Helper()
	for {
		_, err := c.groups[via].Propose(ctx, raftcore.Proposal{Session: 1, Seq: c.seq.Add(1),
			Data: kvtest.Op{Kind: "put", Key: "k", Value: v}.Encode()})
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("write %s via member %d: %v", v, via, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
