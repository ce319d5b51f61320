package membership

import "testing"

func TestNext(t *testing.T) {
	m := func(kv ...uint64) map[uint64]uint64 {
		out := map[uint64]uint64{}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name string
		v    View
		size uint64
		want Step
	}{
		{"already 1..3", View{Self: 1, Voters: []uint64{1, 2, 3}, Commit: 10}, 3, Step{}},
		{"grow: lowest missing member as learner", View{Self: 1, Voters: []uint64{1, 2, 3}, Commit: 10}, 5, Step{AddLearner, 4}},
		{"grow: second learner while the first catches up", View{Self: 1, Voters: []uint64{1, 2, 3}, Learners: []uint64{4},
			Commit: 5000, Match: m(4, 0)}, 5, Step{AddLearner, 5}},
		{"learner not caught up is not promoted", View{Self: 1, Voters: []uint64{1, 2, 3, 5}, Learners: []uint64{4},
			Commit: 5000, Match: m(4, 5000-CatchUpSlack-1)}, 5, Step{}},
		{"caught-up learner promoted, lowest first", View{Self: 1, Voters: []uint64{1, 2, 3}, Learners: []uint64{5, 4},
			Commit: 5000, Match: m(4, 4990, 5, 5000)}, 5, Step{Promote, 4}},
		{"shrink: highest first", View{Self: 1, Voters: []uint64{1, 2, 3, 4, 5}, Commit: 10}, 3, Step{Remove, 5}},
		{"shrink: learner above size removed too", View{Self: 1, Voters: []uint64{1, 2, 3}, Learners: []uint64{4}, Commit: 10}, 3, Step{Remove, 4}},
		{"shrink before promoting", View{Self: 1, Voters: []uint64{1, 2, 3, 5}, Learners: []uint64{2}, Commit: 10, Match: m(2, 10)}, 3, Step{Remove, 5}},
		{"the leader above size hands over first", View{Self: 5, Voters: []uint64{1, 2, 3, 4, 5}, Commit: 10}, 3, Step{TransferLeadership, 5}},
		{"size 0 keeps the last voter", View{Self: 1, Voters: []uint64{1}, Commit: 10}, 0, Step{}},
		{"size 0 removes down to one voter", View{Self: 1, Voters: []uint64{1, 2}, Commit: 10}, 0, Step{Remove, 2}},
		{"size 0: the last voter's learners go", View{Self: 1, Voters: []uint64{1}, Learners: []uint64{2}, Commit: 10}, 0, Step{Remove, 2}},
		{"a member that lost its log is removed (to be added back as a learner)", View{Self: 1, Voters: []uint64{1, 2, 3},
			Commit: 10, Match: m(2, 10, 3, 10), Lost: []uint64{2}}, 3, Step{Remove, 2}},
		{"then added back as a learner", View{Self: 1, Voters: []uint64{1, 3}, Commit: 10}, 3, Step{AddLearner, 2}},
		{"a lost learner is replaced too", View{Self: 1, Voters: []uint64{1, 2, 3}, Learners: []uint64{4}, Commit: 10, Lost: []uint64{4}}, 4, Step{Remove, 4}},
		{"removals above size come before replacing", View{Self: 1, Voters: []uint64{1, 2, 3, 4}, Commit: 10, Lost: []uint64{2}}, 3, Step{Remove, 4}},
		{"the leader never replaces itself", View{Self: 1, Voters: []uint64{1, 2, 3}, Commit: 10, Lost: []uint64{1}}, 3, Step{}},
		{"a gap in the ids is filled", View{Self: 1, Voters: []uint64{1, 3}, Commit: 10}, 3, Step{AddLearner, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Next(tc.v, tc.size); got != tc.want {
				t.Fatalf("Next(%+v, %d) = %v, want %v", tc.v, tc.size, got, tc.want)
			}
		})
	}
}
