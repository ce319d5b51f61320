package replication

import (
	"errors"
	"io"
	"os"

	"github.com/smr-io/smr-cri/raftcore"
)

var _ raftcore.StreamSnapshotter = (*resumingSM)(nil)

var errNoStreamSnapshots = errors.New("replication: the member's state machine has no snapshots")

// SnapshotTo implements raftcore.StreamSnapshotter for the wrapped executor.
func (r *resumingSM) SnapshotTo(index uint64, w io.Writer) error {
	sn, ok := r.next.(raftcore.StreamSnapshotter)
	if !ok {
		return errNoStreamSnapshots
	}
	return sn.SnapshotTo(index, w)
}

// RestoreFrom implements raftcore.StreamSnapshotter. The app is replaced by
// the snapshot's state, so every later entry must run on it: the resume
// point of the progress record no longer applies (the record moves to the
// snapshot's index, and an uncertain app is known again). At a daemon
// restart this restores the latest snapshot into the running app too, and
// the suffix is executed again on it: correct, at the cost of one restore.
func (r *resumingSM) RestoreFrom(index uint64, rd io.Reader) error {
	sn, ok := r.next.(raftcore.StreamSnapshotter)
	if !ok {
		return errNoStreamSnapshots
	}
	if r.donor != nil {
		// Raft starts after this member's own snapshot; the donor's is
		// at least as new (fetchDonor), and replaces it. The group
		// reads the rest of rd to check it.
		if r.donor.index >= index {
			return r.restoreDonor(sn)
		}
		r.log.Warn("a healthy member's snapshot is older than this member's own; restoring the own one",
			"group", r.group, "donor_index", r.donor.index, "own_index", index)
		_ = os.Remove(r.donor.path)
		r.donor = nil
	}
	r.prog.mu.Lock()
	uncertain, kind := r.prog.uncertain != "", r.prog.cause
	r.prog.mu.Unlock()
	err := sn.RestoreFrom(index, rd)
	if x, ok := r.next.(*Executor); ok && uncertain {
		// A repair (e.g. of a diverged or restarted app) that the snapshot
		// settles: the app was replaced by the snapshot's state, so it
		// counts as that repair (smr_repairs_total), as RestoreApp would.
		x.m.repair(kind, err == nil)
	}
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resumed, r.open = true, nil
	r.cur = position{index, 0}
	if err := r.prog.repaired(r.cur); err != nil {
		r.log.Error("record applied position after snapshot restore", "err", err)
	}
	r.log.Info("app restored from a snapshot", "group", r.group, "index", index)
	return nil
}

// ExecutorOf returns the executor a group's state machine runs, looking
// through the progress wrapper the Manager adds.
func ExecutorOf(sm raftcore.StateMachine) (*Executor, bool) {
	if r, ok := sm.(*resumingSM); ok {
		sm = r.next
	}
	x, ok := sm.(*Executor)
	return x, ok
}
