package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/smr-io/smr-cri/internal/nodestatus"
	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/podcontract"
)

// This file is the operator's view of the daemon: the members it runs (for
// `smr-cri status`) and the Kubernetes Events it records on their pods.

// ReplicaStater is implemented by an executor that knows its replica state
// (nodestatus.StateServing, StateRebuilding or StateBroken) and why.
// Without it the state is derived from Health.
type ReplicaStater interface {
	ReplicaState() string
}

// healthChecker is replication.Executor's Health.
type healthChecker interface{ Health() error }

// appProgress is what the executor knows of its app (Executor has both).
type appProgress interface {
	Applied() uint64
	Sessions() int
}

// statusPoll is how often a member's raft state is checked for the
// leader-elected and membership events.
const statusPoll = 500 * time.Millisecond

// memberRegistry is the registry of running members for Status.
type memberRegistry struct {
	mu   sync.Mutex
	byID map[string]*trackedMember // by member directory
}

type trackedMember struct {
	sandbox string
	pod     podevents.Pod
	dir     string // member directory; raft data in dir/<group>
	group   *raftcore.Group
	sm      raftcore.StateMachine
}

// Events returns the recorder the daemon records pod events with (never
// nil): Config.Events, or one over the daemon's API client, or Discard
// without an API server. Repairs and membership changes call it.
func (d *Daemon) Events() podevents.Recorder {
	if d.events == nil {
		return podevents.Discard{}
	}
	return d.events
}

// newRecorder is Config.Events, else a Broadcaster over the API client
// loaded lazily (nil without one). close stops what it started.
func newRecorder(cfg Config, d *Daemon) (podevents.Recorder, func(context.Context)) {
	if cfg.Events != nil {
		return cfg.Events, func(context.Context) {}
	}
	if cfg.Kube == nil && cfg.Kubeconfig == "" {
		return nil, func(context.Context) {}
	}
	b := podevents.New(podevents.Config{Sink: lazySink{d}, Host: cfg.NodeName, Log: cfg.Log})
	return b, b.Close
}

// lazySink sends events through the daemon's API client, loaded at first
// use like discovery's.
type lazySink struct{ d *Daemon }

func (s lazySink) CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	disc, err := s.d.discovery()
	if err != nil {
		return nil, err
	}
	return disc.Client.CreateEvent(ctx, ev)
}

func (s lazySink) PatchEvent(ctx context.Context, ns, name string, patch []byte) (*corev1.Event, error) {
	disc, err := s.d.discovery()
	if err != nil {
		return nil, err
	}
	return disc.Client.PatchEvent(ctx, ns, name, patch)
}

// recordAttachError reports a failed attach on the pod: a broken contract
// as ContractError, anything else as ReplicaAttachFailed.
func (d *Daemon) recordAttachError(pod podevents.Pod, err error) {
	reason := podevents.ReasonAttachFailed
	if errors.Is(err, replication.ErrContract) {
		reason = podevents.ReasonContractError
	}
	d.Events().Event(pod, podevents.Warning, reason, err.Error())
}

// trackMember registers a started member for Status, records its attach
// event and watches its raft state for leader and membership events until
// untrack is called (when the member stops).
func (d *Daemon) trackMember(ctx context.Context, pod podcontract.Pod, spec replication.Spec, dir string,
	g *raftcore.Group, sm raftcore.StateMachine, self string) (untrack func()) {
	tm := &trackedMember{sandbox: pod.SandboxID, dir: dir, group: g, sm: sm,
		pod: podevents.Pod{Namespace: pod.Meta.Namespace, Name: pod.Meta.Name, UID: pod.UID}}
	d.status.mu.Lock()
	if d.status.byID == nil {
		d.status.byID = map[string]*trackedMember{}
	}
	d.status.byID[dir] = tm
	d.status.mu.Unlock()
	podevents.Eventf(d.Events(), tm.pod, podevents.Normal, podevents.ReasonAttached,
		"attached as member %d of group %s (raft at %s, node %s)", spec.MemberID, spec.GroupKey(), self, d.cfg.NodeName)
	bg, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchRaft(bg, g, statusPoll, func(reason, msg string) {
			d.Events().Event(tm.pod, podevents.Normal, reason, msg)
		})
	}()
	storageDone := make(chan struct{})
	go func() {
		defer close(storageDone)
		publishStorage(bg, g, storagePoll, d.log)
	}()
	return func() {
		cancel()
		<-done
		<-storageDone
		d.status.mu.Lock()
		if d.status.byID[dir] == tm {
			delete(d.status.byID, dir)
		}
		d.status.mu.Unlock()
	}
}

// storagePoll is how often a member's log bytes and snapshot index are
// published (smr_raft_log_bytes, smr_raft_snapshot_index): walking the
// member's directory is cheap, but needs no finer grain for alerts over hours.
const storagePoll = 15 * time.Second

// publishStorage publishes g's storage metrics now and every interval until
// ctx ends.
func publishStorage(ctx context.Context, g *raftcore.Group, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := g.PublishStorage(); err != nil {
			log.Debug("publish storage metrics", "group", g.Name(), "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// raftStatus is what watchRaft reads (raftcore.Group's Status).
type raftStatus interface{ Status() raftcore.Status }

// watchRaft polls the member's raft state every interval and calls record
// when this member becomes leader (once per term: only the new leader
// records it) and, while it leads, for every member added or removed.
func watchRaft(ctx context.Context, g raftStatus, interval time.Duration, record func(reason, msg string)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var ledTerm uint64
	var members map[uint64]string // as last seen while leading
	for {
		st := g.Status()
		if st.State == "StateLeader" {
			if st.Term != ledTerm {
				ledTerm = st.Term
				record(podevents.ReasonLeaderElected, fmt.Sprintf("member %d is the leader of group %s (term %d, commit %d)",
					st.ID, st.Group, st.Term, st.Commit))
			} else {
				for _, id := range sortedIDs(st.Members) {
					if _, ok := members[id]; !ok {
						record(podevents.ReasonMemberAdded, fmt.Sprintf("member %d (%s) added to group %s", id, st.Members[id], st.Group))
					}
				}
				for _, id := range sortedIDs(members) {
					if _, ok := st.Members[id]; !ok {
						record(podevents.ReasonMemberRemoved, fmt.Sprintf("member %d removed from group %s", id, st.Group))
					}
				}
			}
			members = st.Members
		} else {
			members = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func sortedIDs(m map[uint64]string) []uint64 {
	ids := make([]uint64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Status reports every member running on this node.
func (d *Daemon) Status() nodestatus.Report {
	d.status.mu.Lock()
	tms := make([]*trackedMember, 0, len(d.status.byID))
	for _, tm := range d.status.byID {
		tms = append(tms, tm)
	}
	d.status.mu.Unlock()
	r := nodestatus.Report{Node: d.cfg.NodeName, Time: time.Now().UTC(), Members: []nodestatus.Member{}}
	for _, tm := range tms {
		r.Members = append(r.Members, tm.status())
	}
	nodestatus.Sort(r.Members)
	return r
}

func (tm *trackedMember) status() nodestatus.Member {
	st := tm.group.Status()
	m := nodestatus.Member{Group: st.Group, MemberID: st.ID, Pod: tm.pod.String(), Role: roleName(st.State),
		Term: st.Term, Leader: st.Leader, Commit: st.Commit, Applied: st.Applied, Sessions: st.Sessions,
		Peers: sortedIDs(st.Members), Learners: slices.Sorted(slices.Values(st.Learners)), CatchingUp: st.CatchingUp}
	if p, ok := tm.sm.(appProgress); ok {
		m.Applied, m.Sessions = p.Applied(), p.Sessions()
	}
	if m.Commit > m.Applied {
		m.Lag = m.Commit - m.Applied
	}
	m.State, m.StateDetail = replicaState(tm.sm)
	raftDir := filepath.Join(tm.dir, st.Group)
	m.SnapshotIndex = lastSnapshot(filepath.Join(raftDir, "snap"))
	m.LogBytes = dirBytes(filepath.Join(raftDir, "wal")) + dirBytes(filepath.Join(raftDir, "snap"))
	return m
}

// roleName turns raft's StateLeader into leader, StatePreCandidate into
// pre-candidate.
func roleName(s string) string {
	s = strings.TrimPrefix(s, "State")
	if s == "PreCandidate" {
		return "pre-candidate"
	}
	return strings.ToLower(s)
}

// replicaState is the executor's ReplicaState when it has one, else derived
// from Health: entries waiting for an unreachable app are rebuilding, any
// other failure (the queue overflowed: the replica diverged) broken.
func replicaState(sm raftcore.StateMachine) (state, detail string) {
	if rs, ok := sm.(ReplicaStater); ok {
		return rs.ReplicaState(), ""
	}
	h, ok := sm.(healthChecker)
	if !ok {
		return nodestatus.StateServing, ""
	}
	err := h.Health()
	switch {
	case err == nil:
		return nodestatus.StateServing, ""
	case errors.Is(err, replication.ErrNotReady) && strings.Contains(err.Error(), "wait for the app"):
		return nodestatus.StateRebuilding, err.Error()
	default:
		return nodestatus.StateBroken, err.Error()
	}
}

// lastSnapshot is the highest index among etcd snapshot files
// (<term>-<index>.snap, 16 hex digits each) in dir; 0 when none.
func lastSnapshot(dir string) uint64 {
	names, _ := filepath.Glob(filepath.Join(dir, "*.snap"))
	var last uint64
	for _, n := range names {
		base := strings.TrimSuffix(filepath.Base(n), ".snap")
		_, idx, ok := strings.Cut(base, "-")
		if !ok {
			continue
		}
		if v, err := strconv.ParseUint(idx, 16, 64); err == nil {
			last = max(last, v)
		}
	}
	return last
}

// dirBytes is the total size of the regular files under dir (0 if missing).
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil //nolint:nilerr // a file gone meanwhile: count the rest
		}
		if e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
