package replication

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/appstate"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

// snapMember is one replica of the snapshot tests: a real redis-server, an
// executor with snapshots, a raftcore node on the in-memory network.
type snapMember struct {
	id     uint64
	app    string
	exec   *Executor
	node   *raftcore.Node
	group  *raftcore.Group
	trace  *syncBuffer
	tracer *Tracer
}

// startSnapGroup starts three snapshotting members (every entries), each
// with its own redis-server, on an in-memory network, runs setup on each
// (nil: nothing), and waits for a leader.
func startSnapGroup(t *testing.T, every uint64, setup func(*snapMember)) (network *memnet.Network, dir string,
	peers map[uint64]string, ms map[uint64]*snapMember, leader *raftcore.Group) {
	t.Helper()
	network = memnet.New()
	t.Cleanup(network.Close)
	dir = t.TempDir()
	peers = map[uint64]string{1: "m1", 2: "m2", 3: "m3"}
	ms = map[uint64]*snapMember{}
	for id := uint64(1); id <= 3; id++ {
		ms[id] = startSnapMember(t, network, dir, id, startRedis(t), peers, every)
		if setup != nil {
			setup(ms[id])
		}
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.stop()
		}
	})
	waitFor(t, "a leader", func() bool {
		for _, m := range ms {
			if st := m.group.Status(); st.Leader == m.id {
				leader = m.group
				return true
			}
		}
		return false
	})
	return network, dir, peers, ms, leader
}

func startSnapMember(t *testing.T, network *memnet.Network, dir string, id uint64, app string, peers map[uint64]string, every uint64) *snapMember {
	t.Helper()
	m := &snapMember{id: id, app: app, trace: &syncBuffer{}}
	m.tracer = NewTracer(m.trace)
	var err error
	m.exec, err = NewExecutor(ExecutorConfig{Group: testGroup, Self: id, Ports: []Port{respPort}, Dialer: &addrDialer{addr: app}, Trace: m.tracer})
	if err != nil {
		t.Fatal(err)
	}
	if every > 0 { // every == 0: a member as the code before snapshots ran it
		if err := m.exec.EnableSnapshots(SnapshotConfig{}); err != nil {
			t.Fatal(err)
		}
	}
	m.node, err = raftcore.NewNode(raftcore.NodeConfig{DataDir: filepath.Join(dir, peers[id]), Transport: network.Endpoint(peers[id]),
		TickInterval: 10 * time.Millisecond, UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	m.group, err = m.node.StartGroup(raftcore.GroupConfig{Name: testGroup, SelfID: id, Peers: peers, SnapshotEvery: every}, m.exec)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *snapMember) stop() {
	_ = m.node.Close()
	_ = m.exec.Close()
	_ = m.tracer.Close()
}

func (m *snapMember) digest(t *testing.T) appstate.Digest {
	t.Helper()
	a, err := appstate.New(appstate.Config{Dialer: &addrDialer{addr: m.app}, Port: respPort.Number, Protocol: framing.ProtoRESP})
	if err != nil {
		t.Fatal(err)
	}
	d, err := a.Digest(context.Background(), appstate.DigestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (m *snapMember) count(kind string) int {
	m.tracer.Flush()
	return strings.Count(m.trace.String(), "smr="+kind+" ")
}

// writeKeys opens a session on g and SETs n keys through the log.
func writeKeys(t *testing.T, g *raftcore.Group, session uint64, from, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seq := uint64(1)
	if from == 0 {
		if _, err := g.Propose(ctx, raftcore.Proposal{Session: session, Seq: seq, Data: Op{Kind: KindOpen, Port: respPort.Number, Protocol: framing.ProtoRESP}.Encode()}); err != nil {
			t.Fatal(err)
		}
	}
	seq = uint64(from) + 2
	for i := from; i < from+n; i++ {
		k, v := fmt.Sprintf("key:%d", i), fmt.Sprintf("value-%d", i)
		raw := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(k), k, len(v), v)
		res, err := g.Propose(ctx, raftcore.Proposal{Session: session, Seq: seq, Data: Op{Kind: KindRequest, Name: "SET", Raw: []byte(raw)}.Encode()})
		if err != nil || string(res.Value) != "+OK\r\n" {
			t.Fatalf("SET %s: %q %v", k, res.Value, err)
		}
		seq++
	}
}

// TestSnapshotCompactionAndTransfer: with a small snapshot-every, a member
// cut off while the log is compacted past it receives the leader's
// snapshot, installs it into its own redis-server and follows the log; a
// member restarted with an empty app starts from its latest snapshot and
// replays only the suffix. Every app ends with the same digest.
func TestSnapshotCompactionAndTransfer(t *testing.T) {
	requireIntegration(t)
	const every = 200
	network, dir, peers, ms, leader := startSnapGroup(t, every, nil)
	lid := leader.ID()
	lag := ms[lid%3+1] // a follower
	network.Isolate(peers[lag.id], peers[lid], peers[6-lid-lag.id])
	writeKeys(t, leader, 0xabc1, 0, 1500) // > compactMargin (1024) past a snapshot
	network.Heal()
	writeKeys(t, leader, 0xabc1, 1500, 10)
	waitFor(t, "the cut-off member to catch up", func() bool {
		return lag.exec.Applied() >= leader.Status().Commit
	})
	if n := lag.count("restore"); n != 1 {
		t.Fatalf("the cut-off member installed %d snapshots, want 1 (trace:\n%s)", n, lag.trace.String())
	}
	states, _ := filepath.Glob(filepath.Join(dir, peers[lag.id], testGroup, "snap", "*.state"))
	if len(states) == 0 {
		t.Fatal("the cut-off member kept no state file: the snapshot did not arrive as a stream")
	}
	d := ms[lid].digest(t)
	for _, m := range ms {
		waitFor(t, "every member to apply the last write", func() bool { return m.exec.Applied() >= leader.Status().Commit })
		if got := m.digest(t); got != d || got.Keys != 1510 {
			t.Fatalf("member %d digest %s, leader %s (1510 keys)", m.id, got, d)
		}
	}
	if ms[lid].count("snapshot") < 1500/every-1 {
		t.Fatalf("leader took %d snapshots for 1510 entries with snapshot-every %d", ms[lid].count("snapshot"), every)
	}

	// Restart the cut-off member with an empty app: it starts from its
	// latest snapshot and replays at most snapshot-every entries (+ the
	// batch that crossed the bound).
	lag.stop()
	fresh := startRedis(t)
	lag = startSnapMember(t, network, dir, lag.id, fresh, peers, every)
	ms[lag.id] = lag
	waitFor(t, "the restarted member to catch up", func() bool { return lag.exec.Applied() >= leader.Status().Commit })
	if got := lag.digest(t); got != d {
		t.Fatalf("restarted member digest %s, want %s", got, d)
	}
	if n := lag.count("commit"); n > every+64 {
		t.Fatalf("restarted member replayed %d entries, want at most snapshot-every (%d) plus a batch", n, every)
	}
	t.Logf("restarted member: %d entries replayed after its snapshot; leader took %d snapshots", lag.count("commit"), ms[lid].count("snapshot"))
	if lag.count("restore") != 1 {
		t.Fatalf("restarted member did not start from its snapshot:\n%s", lag.trace.String())
	}
}

// TestUpgradeFromWholeLog: a member's data directory written without
// snapshots (as every executor group ran before app snapshots: the whole
// log in the WAL, no snapshot) is read by a member with snapshots on: it
// replays the whole log into a fresh app, then snapshots and compacts, and
// its next restart starts from that snapshot.
func TestUpgradeFromWholeLog(t *testing.T) {
	requireIntegration(t)
	network := memnet.New()
	t.Cleanup(network.Close)
	dir := t.TempDir()
	peers := map[uint64]string{1: "m1"}
	old := startSnapMember(t, network, dir, 1, startRedis(t), peers, 0)
	waitFor(t, "a leader", func() bool { return old.group.Status().Leader == 1 })
	writeKeys(t, old.group, 0xfeed, 0, 300)
	want := old.digest(t)
	old.stop()
	if snaps, _ := filepath.Glob(filepath.Join(dir, "m1", testGroup, "snap", "*")); len(snaps) != 0 {
		t.Fatalf("the member without snapshots wrote %v", snaps)
	}

	const every = 50
	m := startSnapMember(t, network, dir, 1, startRedis(t), peers, every)
	waitFor(t, "a leader", func() bool { return m.group.Status().Leader == 1 })
	writeKeys(t, m.group, 0xbeef, 0, 60) // crosses a snapshot point
	if got := m.count("commit"); got < 300 {
		t.Fatalf("upgraded member applied %d entries, want the whole old log (300+)", got)
	}
	if m.count("snapshot") == 0 {
		t.Fatal("upgraded member took no snapshot")
	}
	d := m.digest(t)
	if d.Keys != want.Keys {
		t.Fatalf("upgraded member holds %d keys, the old app %d", d.Keys, want.Keys)
	}
	m.stop()
	again := startSnapMember(t, network, dir, 1, startRedis(t), peers, every)
	t.Cleanup(again.stop)
	waitFor(t, "the restarted member to apply its log", func() bool {
		st := again.group.Status()
		return st.Leader == 1 && st.Applied >= st.Commit
	})
	if again.count("restore") != 1 || again.count("commit") > every+64 {
		t.Fatalf("restart after the upgrade: %d restores, %d entries replayed", again.count("restore"), again.count("commit"))
	}
	if got := again.digest(t); got != d {
		t.Fatalf("restarted member digest %s, want %s", got, d)
	}
}
