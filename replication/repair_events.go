package replication

import (
	"context"

	"github.com/smr-io/smr-cri/internal/podevents"
)

// The repair path's Kubernetes Events on the replica's pod (what `kubectl
// describe pod` shows): DivergenceDetected when the audit found its app
// different, RepairStarted with the cause, then RepairFinished once the
// rebuilt app caught up with the log (or, as a warning, why it did not).

// repairStarted records the start of a repair of mb for cause.
func (m *Manager) repairStarted(mb *member, cause Cause) {
	if cause.Kind == CauseDivergence {
		podevents.Eventf(m.cfg.Events, mb.ref, podevents.Warning, podevents.ReasonDivergenceDetected,
			"member %d of group %s: %s", mb.spec.MemberID, mb.spec.GroupKey(), cause.Detail)
	}
	podevents.Eventf(m.cfg.Events, mb.ref, podevents.Warning, podevents.ReasonRepairStarted,
		"repairing member %d of group %s (cause %s: %s): its app is brought to the log's state before it serves again",
		mb.spec.MemberID, mb.spec.GroupKey(), cause.Kind, cause.Detail)
}

// repairFinished waits until the rebuilt pod's app caught up with the log
// (or the repair's deadline passes) and records the outcome.
func (m *Manager) repairFinished(mb *member, pod *Pod, cause Cause) {
	ctx, cancel := context.WithTimeout(context.Background(), restoreTimeout)
	defer cancel()
	err := pod.CaughtUp(ctx)
	if err == nil {
		err = pod.Executor().Health()
	}
	if err != nil {
		select {
		case <-pod.done:
			return // stopped meanwhile (pod deleted, rebuilt again): not this repair's outcome
		default:
		}
		m.repairEnded(mb, pod)
		m.repairGaveUp(mb, cause, err)
		return
	}
	m.repairEnded(mb, pod)
	podevents.Eventf(m.cfg.Events, mb.ref, podevents.Normal, podevents.ReasonRepairFinished,
		"member %d of group %s repaired (cause %s): its app applied the log up to index %d and serves again",
		mb.spec.MemberID, mb.spec.GroupKey(), cause.Kind, pod.Executor().Applied())
}

// repairGaveUp records a repair that did not bring the replica back.
func (m *Manager) repairGaveUp(mb *member, cause Cause, err error) {
	podevents.Eventf(m.cfg.Events, mb.ref, podevents.Warning, podevents.ReasonRepairFinished,
		"repair of member %d of group %s (cause %s) failed: %v", mb.spec.MemberID, mb.spec.GroupKey(), cause.Kind, err)
}

// uncertainCause is why the member's running app is uncertain at its start
// (ok=false: it is not), from its progress record.
func (mb *member) uncertainCause() (Cause, bool) {
	if mb.prog == nil {
		return Cause{}, false
	}
	mb.prog.mu.Lock()
	defer mb.prog.mu.Unlock()
	if mb.prog.uncertain == "" {
		return Cause{}, false
	}
	return Cause{Kind: mb.prog.cause, Detail: mb.prog.uncertain}, true
}
