package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/nodestatus"
	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/freeport"
)

// eventLog is a Recorder keeping what it was given.
type eventLog struct {
	mu  sync.Mutex
	evs []string // "ns/name uid type reason: message"
}

func (l *eventLog) Event(pod podevents.Pod, typ, reason, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, fmt.Sprintf("%s %s %s %s: %s", pod, pod.UID, typ, reason, msg))
}

func (l *eventLog) with(reason string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, e := range l.evs {
		if strings.Contains(e, " "+reason+": ") {
			out = append(out, e)
		}
	}
	return out
}

// A running member shows up in Status with its raft and app positions, and
// its pod gets the attach and leader events; a detached one is gone.
func TestDaemonStatusAndEvents(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	evs := &eventLog{}
	d := newLoopbackDaemonWithConfig(t, t.TempDir(), newCounterApp(t), func(c *Config) { c.Events = evs; c.NodeName = "node1" })
	defer d.Close(ctx)
	if err := d.AttachPod(ctx, onePod("sb1", freeport.PortT(t))); err != nil {
		t.Fatal(err)
	}
	incr(t, ctx, <-d.clientAddr, 5)
	var m nodestatus.Member
	for {
		r := d.Status()
		if r.Node != "node1" || len(r.Members) != 1 {
			t.Fatalf("status %+v, want one member on node1", r)
		}
		m = r.Members[0]
		if m.Applied == m.Commit || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if m.Group != "default.redis" || m.MemberID != 1 || m.Pod != "default/redis-0" || m.Role != "leader" || m.Leader != 1 ||
		m.Term == 0 || m.Commit < 6 || m.Lag != 0 || m.State != nodestatus.StateServing || m.LogBytes <= 0 || !m.Healthy() ||
		!slices.Equal(m.Peers, []uint64{1}) {
		t.Fatalf("member %+v", m)
	}
	// The leader event is recorded once, by the leader, however often it is polled.
	time.Sleep(3 * statusPoll)
	if got := evs.with(podevents.ReasonAttached); len(got) != 1 || !strings.Contains(got[0], "default/redis-0 u-sb1 Normal") ||
		!strings.Contains(got[0], "member 1 of group default.redis") {
		t.Errorf("attached events %q", got)
	}
	if got := evs.with(podevents.ReasonLeaderElected); len(got) != 1 || !strings.Contains(got[0], "member 1 is the leader of group default.redis") {
		t.Errorf("leader events %q", got)
	}
	if err := d.DetachPod(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if r := d.Status(); len(r.Members) != 0 {
		t.Fatalf("after detach: %+v", r.Members)
	}

	// A broken contract is a Warning ContractError on that pod.
	bad := onePod("sb2", freeport.PortT(t))
	bad.Annotations[podcontract.AnnotationPorts] = "6379/gopher"
	if err := d.AttachPod(ctx, bad); err == nil {
		t.Fatal("bad contract attached")
	}
	if got := evs.with(podevents.ReasonContractError); len(got) != 1 || !strings.Contains(got[0], "u-sb2 Warning") ||
		!strings.Contains(got[0], podcontract.AnnotationPorts) {
		t.Errorf("contract events %q", got)
	}
}

// scriptedRaft returns the statuses of a script, then the last one forever.
type scriptedRaft struct {
	mu     sync.Mutex
	script []raftcore.Status
}

func (s *scriptedRaft) Status() raftcore.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.script[0]
	if len(s.script) > 1 {
		s.script = s.script[1:]
	}
	return st
}

func TestWatchRaft(t *testing.T) {
	three := map[uint64]string{1: "a", 2: "b", 3: "c"}
	four := map[uint64]string{1: "a", 2: "b", 3: "c", 4: "d"}
	two := map[uint64]string{1: "a", 3: "c"}
	st := func(state string, term uint64, members map[uint64]string) raftcore.Status {
		return raftcore.Status{Group: "ns.g", ID: 1, State: state, Term: term, Members: members}
	}
	tests := []struct {
		name   string
		script []raftcore.Status
		want   []string
	}{
		{"follower records nothing", []raftcore.Status{st("StateFollower", 1, three), st("StateFollower", 2, four)}, nil},
		{"leader once per term", []raftcore.Status{st("StateFollower", 1, three), st("StateLeader", 2, three), st("StateLeader", 2, three),
			st("StateFollower", 3, three), st("StateLeader", 4, three)},
			[]string{"LeaderElected: member 1 is the leader of group ns.g (term 2, commit 0)", "LeaderElected: member 1 is the leader of group ns.g (term 4, commit 0)"}},
		{"membership changes seen by the leader", []raftcore.Status{st("StateLeader", 2, three), st("StateLeader", 2, four), st("StateLeader", 2, two)},
			[]string{"LeaderElected: member 1 is the leader of group ns.g (term 2, commit 0)", "MemberAdded: member 4 (d) added to group ns.g",
				"MemberRemoved: member 2 removed from group ns.g", "MemberRemoved: member 4 removed from group ns.g"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			var mu sync.Mutex
			var got []string
			done := make(chan struct{})
			src := &scriptedRaft{script: tc.script}
			go func() {
				defer close(done)
				watchRaft(ctx, src, time.Millisecond, func(reason, msg string) {
					mu.Lock()
					got = append(got, reason+": "+msg)
					mu.Unlock()
				})
			}()
			for {
				src.mu.Lock()
				left := len(src.script)
				src.mu.Unlock()
				if left == 1 {
					break
				}
				time.Sleep(time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond) // the last status polled a few more times
			cancel()
			<-done
			if !slices.Equal(got, tc.want) {
				t.Fatalf("events:\n%q\nwant:\n%q", got, tc.want)
			}
		})
	}
}

type healthSM struct {
	raftcore.StateMachine
	err error
}

func (h healthSM) Health() error { return h.err }

type stateSM struct{ raftcore.StateMachine }

func (stateSM) ReplicaState() string { return nodestatus.StateRebuilding }

func TestReplicaState(t *testing.T) {
	tests := []struct {
		name string
		sm   raftcore.StateMachine
		want string
	}{
		{"ReplicaState wins", stateSM{}, nodestatus.StateRebuilding},
		{"healthy", healthSM{}, nodestatus.StateServing},
		{"queue for the app", healthSM{err: fmt.Errorf("%w: 3 entries wait for the app", replication.ErrNotReady)}, nodestatus.StateRebuilding},
		{"queue overflowed", healthSM{err: fmt.Errorf("%w: it stayed unreachable for 9 entries", replication.ErrNotReady)}, nodestatus.StateBroken},
		{"other error", healthSM{err: errors.New("boom")}, nodestatus.StateBroken},
		{"no health at all", struct{ raftcore.StateMachine }{}, nodestatus.StateServing},
	}
	for _, tc := range tests {
		if got, _ := replicaState(tc.sm); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestLastSnapshotAndDirBytes(t *testing.T) {
	dir := t.TempDir()
	for name, size := range map[string]int{
		"0000000000000002-0000000000000010.snap": 10, "0000000000000003-00000000000001f4.snap": 20,
		"garbage.snap": 5, "0000000000000003-zz.snap": 1, "db": 100,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got := lastSnapshot(dir); got != 0x1f4 {
		t.Errorf("lastSnapshot = %d, want 500", got)
	}
	if got := lastSnapshot(filepath.Join(dir, "missing")); got != 0 {
		t.Errorf("lastSnapshot of a missing dir = %d", got)
	}
	if got := dirBytes(dir); got != 136 {
		t.Errorf("dirBytes = %d, want 136", got)
	}
	if got := dirBytes(filepath.Join(dir, "missing")); got != 0 {
		t.Errorf("dirBytes of a missing dir = %d", got)
	}
}
