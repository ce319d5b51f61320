package transport

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// idleLayout is groups of 3 members running idle in this process over
// loopback gRPC with mutual TLS and real WALs, at the default tick.
type idleLayout struct {
	nodes  []*raftcore.Node
	groups []*raftcore.Group
}

// layout is how the members of the idle groups are placed.
type layout int

const (
	nodePerMember layout = iota // production: a Node and a transport per member
	sharedNode                  // one Node and transport per "host", 3 in all
	solo                        // one-member groups in one Node: ticking without messages
)

// startIdle starts n groups of 3 members (solo: 3n groups of 1). nodePerMember is production's
// shape: every member has its own Node and transport (its own listener in
// its pod). sharedNode puts every group's member i into one Node with one
// transport (3 Nodes in all): one process per host serving many groups.
func startIdle(b *testing.B, ca *pki.CA, n int, how layout) *idleLayout {
	b.Helper()
	name := func(g int) string { return fmt.Sprintf("idle-%d", g) }
	newTransport := func(ids []pki.Identity) *GRPC {
		m, err := pki.NewMember(ca, ids, time.Hour, nil)
		if err != nil {
			b.Fatal(err)
		}
		tr, err := New(Config{Listen: "127.0.0.1:0", TLS: m.TLS, AuthorizePeer: m.Authorize})
		if err != nil {
			b.Fatal(err)
		}
		return tr
	}
	l := &idleLayout{}
	newNode := func(tr *GRPC) *raftcore.Node {
		node, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: b.TempDir(), Transport: tr})
		if err != nil {
			b.Fatal(err)
		}
		l.nodes = append(l.nodes, node)
		return node
	}
	if how == solo {
		ids := make([]pki.Identity, 3*n)
		for g := range ids {
			ids[g] = pki.Identity{Group: name(g), Member: 1}
		}
		tr := newTransport(ids)
		node := newNode(tr)
		for g := range ids {
			grp, err := node.StartGroup(raftcore.GroupConfig{Name: name(g), SelfID: 1, Peers: map[uint64]string{1: tr.Addr()}}, kvtest.NewKV())
			if err != nil {
				b.Fatal(err)
			}
			l.groups = append(l.groups, grp)
		}
		return l.waitLeaders(b)
	}
	// nodeOf[g][id-1] is the Node hosting member id of group g.
	nodeOf := make([][3]*raftcore.Node, n)
	addrOf := make([][3]string, n)
	if how == sharedNode {
		for id := uint64(1); id <= 3; id++ {
			ids := make([]pki.Identity, n)
			for g := range n {
				ids[g] = pki.Identity{Group: name(g), Member: id}
			}
			tr := newTransport(ids)
			node := newNode(tr)
			for g := range n {
				nodeOf[g][id-1], addrOf[g][id-1] = node, tr.Addr()
			}
		}
	} else {
		for g := range n {
			for id := uint64(1); id <= 3; id++ {
				tr := newTransport([]pki.Identity{{Group: name(g), Member: id}})
				nodeOf[g][id-1], addrOf[g][id-1] = newNode(tr), tr.Addr()
			}
		}
	}
	for g := range n {
		peers := map[uint64]string{1: addrOf[g][0], 2: addrOf[g][1], 3: addrOf[g][2]}
		for id := uint64(1); id <= 3; id++ {
			grp, err := nodeOf[g][id-1].StartGroup(raftcore.GroupConfig{Name: name(g), SelfID: id, Peers: peers}, kvtest.NewKV())
			if err != nil {
				b.Fatal(err)
			}
			l.groups = append(l.groups, grp)
		}
	}
	return l.waitLeaders(b)
}

// waitLeaders waits until every member knows a leader.
func (l *idleLayout) waitLeaders(b *testing.B) *idleLayout {
	b.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		led := 0
		for _, g := range l.groups {
			if g.Status().Leader != 0 {
				led++
			}
		}
		if led == len(l.groups) {
			return l
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d members know a leader after a minute", led, len(l.groups))
		}
	}
}

func (l *idleLayout) stop() {
	for _, n := range l.nodes {
		_ = n.Close()
	}
}

// processCPU is this process's user+system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idleCPU is the CPU this process spends over window with the layout (or
// nothing) running, in percent of one core.
func idleCPU(b *testing.B, window time.Duration) float64 {
	c0, t0 := processCPU(b), time.Now()
	time.Sleep(window)
	return 100 * float64(processCPU(b)-c0) / float64(time.Since(t0))
}

// BenchmarkIdleGroups measures what idle raft members cost (the question
// behind the one-Node-per-member decision in docs/architecture.md): 10
// groups of 3 members, no proposals, in production's shape (a Node and a
// TLS transport per member), against one shared Node and transport per
// "host" (3 in all), and against 30 one-member groups (the ticking alone,
// no heartbeats), each measured over the same window in one run, after an
// empty baseline. The -cpu-%/member metrics are the share of one core each
// idle member costs; shared/per-member and ticks/per-member are ratios
// against production's shape.
func BenchmarkIdleGroups(b *testing.B) {
	const groups = 10
	window := 5 * time.Second
	ca, err := pki.NewCA("idle bench CA", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	var base float64
	cpu := map[layout]float64{}
	for range b.N {
		base += idleCPU(b, window)
		for _, how := range []layout{nodePerMember, sharedNode, solo} {
			l := startIdle(b, ca, groups, how)
			time.Sleep(time.Second) // elections and first appends done
			cpu[how] += idleCPU(b, window)
			l.stop()
		}
	}
	n, members := float64(b.N), float64(3*groups)
	base /= n
	per := func(how layout) float64 { return (cpu[how]/n - base) / members }
	b.ReportMetric(base, "baseline-cpu-%")
	b.ReportMetric(per(nodePerMember), "node-per-member-cpu-%/member")
	b.ReportMetric(per(sharedNode), "shared-node-cpu-%/member")
	b.ReportMetric(per(solo), "ticks-only-cpu-%/member")
	b.ReportMetric(per(sharedNode)/per(nodePerMember), "shared/per-member")
	b.ReportMetric(per(solo)/per(nodePerMember), "ticks/per-member")
}
