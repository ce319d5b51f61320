package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/raftcore"
)

// Readiness follows truth: a replica's pod is Ready only while its app is
// known to be at the log's state. smr-cri sets the pod condition
// ConditionReplicaServing, which a pod lists in spec.readinessGates; kubelet
// then keeps the pod not Ready (Services send it no clients) while the
// condition is False. A pod without the gate keeps kubelet's own readiness.
// The replica's listener follows the same verdict: while it is not serving,
// new clients get a protocol error naming the reason (pod.go).

// ConditionReplicaServing is the pod condition type smr-cri sets; a pod
// opts in with `readinessGates: [{conditionType: smr.io/replica-serving}]`.
const ConditionReplicaServing = "smr.io/replica-serving"

// Readiness reasons (the condition's reason).
const (
	ReadyServing    = "Serving"    // the app is at the log's state
	ReadyRebuilding = "Rebuilding" // a repair brings the app to the log's state
	ReadyBroken     = "Broken"     // this replica cannot follow the log until its pod restarts
	ReadyBehind     = "Behind"     // the app has not applied a large part of what the group committed
)

// DefaultReadinessMaxLag is how many committed entries a replica's app may
// not have applied yet and still count as serving: under load a healthy
// replica is a batch or two behind the commit index, a restarted or
// rejoining one replaying its log is far more.
const DefaultReadinessMaxLag = 1000

// DefaultReadinessInterval is how often a member's readiness is
// re-evaluated (and published when it changed); a repair publishes at once.
const DefaultReadinessInterval = time.Second

// Readiness is the verdict on one replica.
type Readiness struct {
	Serving bool
	Reason  string // one of the Ready* reasons
	Message string // for people: what is wrong and why
}

// readinessInput is what the verdict is made of (readinessOf).
type readinessInput struct {
	// failed: the last repair of the member gave up (it stays down).
	failed error
	// repairing: a repair was started and its app has not caught up yet.
	repairing bool
	cause     Cause
	// state and health of the running executor (nil health: following).
	state  string
	health error
	// status: the member's raft status, if the orderer reports one.
	status    raftcore.Status
	hasStatus bool
	maxLag    uint64
}

// readinessOf decides whether a replica serves. A fresh member of a new
// group (nothing committed beyond what it applied, whether or not a leader
// is known yet) counts as at the committed state, so a StatefulSet with
// OrderedReady can create the next pod.
func readinessOf(in readinessInput) Readiness {
	switch {
	case in.failed != nil:
		return Readiness{Reason: ReadyBroken, Message: fmt.Sprintf("repair failed: %v", in.failed)}
	case in.state == StateBroken:
		return Readiness{Reason: ReadyBroken, Message: healthText(in.health, "the replica cannot follow the log")}
	case in.repairing:
		return Readiness{Reason: ReadyRebuilding, Message: fmt.Sprintf("repair (cause %s: %s): the app is brought to the log's state", in.cause.Kind, in.cause.Detail)}
	case in.state == StateRebuilding:
		return Readiness{Reason: ReadyRebuilding, Message: healthText(in.health, "the app is brought to the log's state")}
	}
	if in.hasStatus && in.status.Commit > in.status.Applied && in.status.Commit-in.status.Applied > in.maxLag {
		return Readiness{Reason: ReadyBehind, Message: fmt.Sprintf("the app applied the log up to index %d of %d committed (more than %d behind)",
			in.status.Applied, in.status.Commit, in.maxLag)}
	}
	return Readiness{Serving: true, Reason: ReadyServing, Message: "the app is at the log's state"}
}

func healthText(err error, fallback string) string {
	if err == nil {
		return fallback
	}
	return err.Error()
}

// errNotServing is the refusal of a new client by a replica that does not
// serve, with the verdict's reason: `-ERR smr-cri: replication unavailable:
// app on this replica is not ready: replica rebuilding: ...` (RESP) or a 503
// with that text (HTTP).
func (r Readiness) errNotServing() error {
	return fmt.Errorf("%w: replica %s: %s; try another replica", ErrNotReady, lowerReason(r.Reason), r.Message)
}

func lowerReason(reason string) string {
	switch reason {
	case ReadyRebuilding:
		return "rebuilding"
	case ReadyBroken:
		return "broken"
	case ReadyBehind:
		return "behind"
	}
	return "not serving"
}

// ReadinessPublisher sets the replica-serving condition of a replica's pod
// (the node daemon: a PATCH of pods/status through the API server). It may
// be slow; a failure is retried at the member's next evaluation.
type ReadinessPublisher interface {
	PublishReadiness(ctx context.Context, pod podevents.Pod, r Readiness) error
}

// executorState is an executor's state and health as of their last change.
type executorState struct {
	state  string
	health error
}

// keepStateLocked records the state for stateNow (called under x.mu at
// every change, with the state gauge).
func (x *Executor) keepStateLocked() {
	var health error
	switch {
	case x.broken != nil:
		health = x.broken
	case len(x.queue) > 0:
		health = fmt.Errorf("%w: %d entries wait for the app", ErrNotReady, len(x.queue))
	}
	x.lastState.Store(&executorState{state: x.stateLocked(), health: health})
}

// stateNow is ReplicaState and Health without x.mu, which a repair holds
// while it waits for the app (a client or kubelet must not wait behind it).
func (x *Executor) stateNow() (string, error) {
	last := x.lastState.Load()
	if last != nil && last.state == StateBroken {
		return last.state, last.health
	}
	if x.restoring.Load() || x.fenced.Load() {
		return StateRebuilding, fmt.Errorf("%w: the app is being rebuilt", ErrNotReady)
	}
	if last != nil {
		return last.state, last.health
	}
	return StateServing, nil
}

// readiness is the current verdict on mb.
func (m *Manager) readiness(mb *member) Readiness {
	in := readinessInput{repairing: mb.repairing.Load(), maxLag: m.cfg.ReadinessMaxLag}
	if f := mb.failed.Load(); f != nil {
		in.failed = *f
	}
	if c := mb.repairCause.Load(); c != nil {
		in.cause = *c
	}
	if pod := mb.cur.Load(); pod != nil {
		in.state, in.health = pod.Executor().stateNow()
		if st, ok := pod.orderer.(interface{ Status() raftcore.Status }); ok {
			in.status, in.hasStatus = st.Status(), true
		}
	} else {
		in.repairing = true // not started yet
	}
	return readinessOf(in)
}

// markRepairing: a repair of mb started (for cause); its pod is not Ready
// until the rebuilt app caught up (repairCaughtUp).
func (m *Manager) markRepairing(mb *member, cause Cause) {
	mb.rmu.Lock()
	defer mb.rmu.Unlock()
	mb.repairCause.Store(&cause)
	mb.repairing.Store(true)
	mb.kickReadiness()
}

// repairEnded: the repair of pod's app ended (caught up with the log, or
// not in time: the verdict then follows the executor). A pod fenced since
// then belongs to a newer repair, which stays in force: Manager.repair
// fences before it marks, and this checks and clears under rmu.
func (m *Manager) repairEnded(mb *member, pod *Pod) {
	mb.rmu.Lock()
	defer mb.rmu.Unlock()
	if pod.Executor().fenced.Load() {
		return
	}
	mb.repairing.Store(false)
	mb.kickReadiness()
}

// repairFailed: the member stays down until its pod is restarted.
func (m *Manager) repairFailed(mb *member, err error) {
	mb.failed.Store(&err)
	mb.kickReadiness()
}

func (mb *member) kickReadiness() {
	select {
	case mb.readyKick <- struct{}{}:
	default:
	}
}

// publishReadiness re-evaluates mb every ReadinessInterval and at every
// kick, and publishes the verdict when its state or reason changed (or the
// last publication failed), until ctx ends.
func (m *Manager) publishReadiness(ctx context.Context, mb *member) {
	if m.cfg.Readiness == nil {
		return
	}
	t := time.NewTicker(m.cfg.ReadinessInterval)
	defer t.Stop()
	var last *Readiness
	var failures int
	for {
		r := m.readiness(mb)
		if last == nil || last.Serving != r.Serving || last.Reason != r.Reason {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := m.cfg.Readiness.PublishReadiness(pctx, mb.ref, r)
			cancel()
			switch {
			case err == nil:
				last, failures = &r, 0
				m.cfg.Log.Info("replica readiness", "pod", mb.ref.String(), "group", mb.spec.GroupKey(), "member", mb.spec.MemberID,
					"serving", r.Serving, "reason", r.Reason, "message", r.Message)
			case errors.Is(err, ErrReadinessNotWanted):
				last = &r // the pod has no readiness gate: nothing to keep in step
			case ctx.Err() == nil:
				if failures++; failures == 1 || failures%60 == 0 {
					m.cfg.Log.Warn("publish replica readiness (will retry)", "pod", mb.ref.String(), "serving", r.Serving,
						"reason", r.Reason, "err", err, "failures", failures)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-mb.readyKick:
		}
	}
}

// ErrReadinessNotWanted is returned by a ReadinessPublisher for a pod that
// does not list the condition in its readiness gates: nothing is patched.
var ErrReadinessNotWanted = errors.New("pod has no smr.io/replica-serving readiness gate")
