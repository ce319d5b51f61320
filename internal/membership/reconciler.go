package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
)

// Group is what the reconciler needs of a raftcore.Group.
type Group interface {
	Name() string
	Status() raftcore.Status
	Progress(ctx context.Context) (uint64, map[uint64]raftcore.MemberProgress, error)
	AddLearner(ctx context.Context, id uint64, addr string) error
	PromoteMember(ctx context.Context, id uint64) error
	RemoveMember(ctx context.Context, id uint64) error
	TransferLeadership(ctx context.Context, to uint64) error
}

// Reconciler makes the group's membership follow Size on whichever member
// leads: every member runs one, only the leader's acts.
type Reconciler struct {
	Group Group
	// Size returns the wanted number of members (ids 1..n); ok=false
	// while it is unknown (e.g. the StatefulSet not read yet): nothing
	// changes then.
	Size func() (n uint64, ok bool)
	// Addr is where a member to add is reached (its pod's raft address, or
	// a placeholder until its pod has an IP: the address moves later).
	Addr func(id uint64) string
	Log  *slog.Logger
	// Interval between passes (default 1s); Kick starts one at once.
	Interval time.Duration
	// StepTimeout bounds one conf change (default 10s).
	StepTimeout time.Duration

	kickOnce sync.Once
	kick     chan struct{}
}

// Kick asks for a pass now (the wanted size changed). Never blocks.
func (r *Reconciler) Kick() {
	select {
	case r.kickc() <- struct{}{}:
	default:
	}
}

func (r *Reconciler) kickc() chan struct{} {
	r.kickOnce.Do(func() { r.kick = make(chan struct{}, 1) })
	return r.kick
}

// Run makes one pass every Interval (or when kicked) until ctx ends, and
// one more right after each change, so a scale by several members proceeds
// one change after the other.
func (r *Reconciler) Run(ctx context.Context) {
	interval := r.Interval
	if interval <= 0 {
		interval = time.Second
	}
	kick := r.kickc()
	for {
		changed, err := r.Once(ctx)
		if err != nil && ctx.Err() == nil {
			r.Log.Warn("membership change failed; retrying", "group", r.Group.Name(), "err", err)
		}
		if changed && err == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-time.After(interval):
		}
	}
}

// Once makes at most one membership change if this member leads and the
// group differs from the wanted size; changed reports whether it made one.
func (r *Reconciler) Once(ctx context.Context) (changed bool, _ error) {
	size, ok := r.Size()
	st := r.Group.Status()
	if !ok || st.State != "StateLeader" {
		return false, nil
	}
	timeout := r.StepTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	commit, prs, err := r.Group.Progress(ctx)
	if err != nil {
		if errors.Is(err, raftcore.ErrInvalidConfig) {
			return false, nil // no longer the leader
		}
		return false, err
	}
	v := View{Self: st.ID, Commit: commit, Match: map[uint64]uint64{}}
	for id, pr := range prs {
		v.Match[id] = pr.Match
		if pr.LostLog {
			v.Lost = append(v.Lost, id)
		}
		if pr.Learner {
			v.Learners = append(v.Learners, id)
		} else {
			v.Voters = append(v.Voters, id)
		}
	}
	slices.Sort(v.Voters)
	slices.Sort(v.Learners)
	step := Next(v, size)
	if step.Op == None {
		return false, nil
	}
	start := time.Now()
	switch step.Op {
	case AddLearner:
		err = r.Group.AddLearner(ctx, step.ID, r.Addr(step.ID))
	case Promote:
		err = r.Group.PromoteMember(ctx, step.ID)
	case Remove:
		err = r.Group.RemoveMember(ctx, step.ID)
	case TransferLeadership:
		err = r.Group.TransferLeadership(ctx, 0)
	}
	if err != nil {
		return false, fmt.Errorf("group %s: %s (size %d): %w", r.Group.Name(), step, size, err)
	}
	r.Log.Info("membership change", "group", r.Group.Name(), "op", step.Op.String(), "member", step.ID,
		"size", size, "voters", fmt.Sprint(v.Voters), "learners", fmt.Sprint(v.Learners),
		"commit", commit, "match", v.Match[step.ID], "took", time.Since(start).Round(time.Millisecond))
	return true, nil
}
