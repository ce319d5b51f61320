// Package membership keeps a raft group's membership equal to the size its
// owner asks for (a StatefulSet's spec.replicas, members 1..replicas):
// Next is the pure decision of the one conf change to make now, Reconciler
// runs it on the group's leader.
//
// Growing adds a member as a learner first (it receives the log, or the
// state by snapshot transfer, without counting toward the quorum) and
// promotes it to voter once it has caught up, so a group never waits for a
// member that is still copying its state. Shrinking removes the members
// whose id is above the size, highest first. One change at a time: each
// step is derived again from the membership the previous one left, which
// makes the steps idempotent (a repeated pass finds nothing to do).
package membership

import (
	"fmt"
	"slices"
)

// CatchUpSlack is how far behind the leader's commit index (in entries) a
// learner may be and still count as caught up: under load the commit index
// never waits, and a member this close catches up within one append.
const CatchUpSlack = 256

// View is the leader's view of its group.
type View struct {
	Self     uint64 // the leader
	Voters   []uint64
	Learners []uint64
	Commit   uint64            // the leader's commit index
	Match    map[uint64]uint64 // per member, the highest index known to be in its log
	// Lost are members that came back without the log they acknowledged
	// (raftcore.MemberProgress.LostLog): raft cannot catch them up under
	// their old progress, so they are removed and added again.
	Lost []uint64
}

// Op is a kind of membership step.
type Op int

const (
	None               Op = iota
	AddLearner            // add ID as a learner
	Promote               // make learner ID a voter
	Remove                // remove member ID
	TransferLeadership    // the leader itself is to be removed: hand leadership to another voter first
)

func (o Op) String() string {
	switch o {
	case AddLearner:
		return "add-learner"
	case Promote:
		return "promote"
	case Remove:
		return "remove"
	case TransferLeadership:
		return "transfer-leadership"
	}
	return "none"
}

// Step is one membership change.
type Step struct {
	Op Op
	ID uint64
}

func (s Step) String() string { return fmt.Sprintf("%s %d", s.Op, s.ID) }

// Next returns the one change that brings v closer to members 1..size:
// first removals (highest id first, never the last voter; the leader hands
// over its leadership before it is removed), then the removal of a member
// that lost its log (it is added back as a learner by a later step), then
// the promotion of a caught up learner (lowest id first), then the addition
// of a missing member as a learner (lowest id first). None when v already
// is 1..size.
func Next(v View, size uint64) Step {
	members := slices.Concat(v.Voters, v.Learners)
	slices.SortFunc(members, func(a, b uint64) int { return compare(b, a) }) // highest first
	for _, id := range members {
		if id <= size {
			continue
		}
		voter := slices.Contains(v.Voters, id)
		if voter && len(v.Voters) == 1 {
			continue // the group keeps one voter (and its state) even at size 0
		}
		if id == v.Self {
			return Step{Op: TransferLeadership, ID: id}
		}
		return Step{Op: Remove, ID: id}
	}
	for _, id := range slices.Sorted(slices.Values(v.Lost)) {
		if id != v.Self && slices.Contains(members, id) && (len(v.Voters) > 1 || !slices.Contains(v.Voters, id)) {
			return Step{Op: Remove, ID: id}
		}
	}
	learners := slices.Sorted(slices.Values(v.Learners))
	for _, id := range learners {
		if id <= size && v.Match[id]+CatchUpSlack >= v.Commit {
			return Step{Op: Promote, ID: id}
		}
	}
	for id := uint64(1); id <= size; id++ {
		if !slices.Contains(members, id) {
			return Step{Op: AddLearner, ID: id}
		}
	}
	return Step{}
}

func compare(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
