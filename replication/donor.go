package replication

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
)

// A replica whose app diverged from the majority's (the audit) cannot be
// repaired from its own snapshots: one taken after the divergence holds it,
// and the same verdict would come back after every repair. It is rebuilt
// from a donor instead: a member of the audit's majority sends its latest
// snapshot (taken for the purpose when its latest is older than this
// member's applied index, so the log this member keeps covers everything
// after it), and the member's next start restores that in place of its own.

// donorState is a healthy member's snapshot pulled for the next start.
type donorState struct {
	index uint64
	path  string
	from  uint64
}

// stateFetcher is implemented by *raftcore.Group.
type stateFetcher interface {
	FetchState(ctx context.Context, from, minIndex uint64) (uint64, error)
	DonorStatePath() string
	Status() raftcore.Status
}

// donorFetchTimeout bounds the pull from one donor (including the donor's
// new snapshot).
var donorFetchTimeout = 2 * time.Minute

// fetchDonor pulls a snapshot from the first of the cause's donors that
// answers, while the fenced member still runs (its group knows where the
// donors are). Without one, the rebuild restores the member's own state
// and says so: the audit finds it again, and the repair-loop bound ends it.
func (m *Manager) fetchDonor(mb *member) *donorState {
	sf, ok := mb.pod.orderer.(stateFetcher)
	if !ok {
		m.cfg.Log.Warn("repair: this member cannot fetch another member's snapshot; rebuilding from its own",
			"group", mb.spec.GroupKey(), "cause", mb.cause.Kind)
		return nil
	}
	// Every entry after the donor's snapshot must still be in this
	// member's log, which starts after its own latest snapshot, taken at
	// or before its applied index.
	minIndex := sf.Status().Applied
	var errs []error
	for _, id := range mb.cause.Donors {
		if id == mb.spec.MemberID {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), donorFetchTimeout)
		idx, err := sf.FetchState(ctx, id, minIndex)
		cancel()
		if err == nil {
			m.cfg.Log.Info("repair: fetched a healthy member's snapshot", "group", mb.spec.GroupKey(),
				"member", mb.spec.MemberID, "donor", id, "index", idx)
			return &donorState{index: idx, path: sf.DonorStatePath(), from: id}
		}
		errs = append(errs, err)
	}
	m.cfg.Log.Error("repair: no healthy member's snapshot could be fetched; rebuilding from this member's own",
		"group", mb.spec.GroupKey(), "member", mb.spec.MemberID, "cause", mb.cause.Kind, "err", errors.Join(errs...))
	return nil
}

// restoreDonor replaces the app by the donor's snapshot and moves the
// resume point to it: the log up to there is skipped (its effects are in
// the donor's state, sessions included), the rest executes.
func (r *resumingSM) restoreDonor(sn raftcore.StreamSnapshotter) error {
	d := r.donor
	r.donor = nil
	defer os.Remove(d.path)
	f, err := os.Open(d.path)
	if err != nil {
		return fmt.Errorf("group %s: open member %d's snapshot: %w", r.group, d.from, err)
	}
	defer f.Close()
	r.prog.mu.Lock()
	uncertain, kind := r.prog.uncertain != "", r.prog.cause
	r.prog.mu.Unlock()
	err = sn.RestoreFrom(d.index, bufio.NewReaderSize(f, 1<<20))
	if x, ok := r.next.(*Executor); ok && uncertain {
		x.m.repair(kind, err == nil)
	}
	if err != nil {
		return fmt.Errorf("group %s: restore member %d's snapshot %d: %w", r.group, d.from, d.index, err)
	}
	pos := position{index: d.index, sub: 1<<32 - 1}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.prog.repaired(pos); err != nil {
		return err
	}
	r.prog.resume = pos
	r.resumed, r.open = false, nil
	r.log.Info("app restored from a healthy member's snapshot", "group", r.group, "donor", d.from, "index", d.index)
	return nil
}
