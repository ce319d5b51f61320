package raftcore

import "io"

// StateMachine is the replicated application. Apply is called from the
// group's apply goroutine, strictly in log order, one entry at a time, on
// every member. It must be deterministic: the same entries in the same order
// must produce the same state and results everywhere.
type StateMachine interface {
	// Apply executes one committed entry. The returned value (or error) is
	// handed to the proposer if the proposal was made on this member.
	Apply(e Entry) ([]byte, error)
}

// BatchStateMachine is optionally implemented by a StateMachine that applies
// a run of consecutive committed entries at once (replication's executor
// pipelines them to its app instead of one round trip each). ApplyBatch must
// have exactly the effect of calling Apply on each entry in order, and
// returns one result per entry, in the same order. The group hands it runs
// of up to MaxApplyBatch entries in which no session appears twice (a retry
// of a pending entry needs its result first), and nothing else happens to
// the group's state between the entries of a run (conf changes, snapshots
// and session housekeeping end a run).
type BatchStateMachine interface {
	ApplyBatch(es []Entry) []ApplyResult
}

// ApplyResult is what Apply returns for one entry of a batch.
type ApplyResult struct {
	Value []byte
	Err   error
}

// MaxApplyBatch bounds the entries of one ApplyBatch call.
const MaxApplyBatch = 256

// Snapshotter is optionally implemented by a StateMachine. With
// GroupConfig.SnapshotEvery > 0 the group calls Snapshot from the apply
// goroutine (so the state is exactly at the last applied entry) and compacts
// the log; Restore replaces the whole state from a snapshot (on restart, or
// when a lagging member receives the leader's snapshot).
type Snapshotter interface {
	Snapshot() ([]byte, error)
	Restore(data []byte) error
}

// StreamSnapshotter is a Snapshotter for states that are produced and
// consumed as streams (an app's state read through its own protocol):
// SnapshotTo writes the state as of the last applied entry, index; RestoreFrom
// replaces the whole state by one written by SnapshotTo at index. Both are
// called from the apply goroutine, between two applied entries. A
// StateMachine implementing it is never asked for Snapshotter's methods.
type StreamSnapshotter interface {
	SnapshotTo(index uint64, w io.Writer) error
	RestoreFrom(index uint64, r io.Reader) error
}

// Entry is one committed client request as seen by the StateMachine.
type Entry struct {
	Group string
	// Index is the raft log index. Requests coalesced into one raft entry
	// share it (they are applied one by one, in order); the group's
	// applied index (ReadIndex, WaitApplied, Status.Applied) moves past it
	// only after all of them were applied.
	Index   uint64
	Term    uint64
	Data    []byte
	Session uint64 // client session of the proposal (0 = none)
	Seq     uint64 // sequence within the session
	Origin  uint64 // member id that proposed it
}

// Proposal is a request to order. A non-zero Session enables
// de-duplication: a proposal whose (Session, Seq) was already applied is not
// applied again and returns the first result. Seq must grow per Session; a
// Seq below the last applied one gets ErrStaleSeq.
//
// The de-duplication state of a session lives until the session ends:
// EndSession drops it when this proposal is applied, EndOriginSessions
// drops every session whose last applied entry was proposed by this member
// (e.g. when it restarted and its old clients are gone). Both take effect in
// apply, at the same log position on every member, so the replicated table
// (and snapshots) stay identical. An ended session stays as a tombstone for
// GroupConfig.SessionEndGrace entries: a retry of the ending proposal still
// gets the first result and a late copy of an earlier one ErrStaleSeq.
// After that nothing of the session is de-duplicated any more, so the state
// machine must ignore requests of a session it closed (replication's
// executor answers them with an error and never reaches the app).
type Proposal struct {
	Session, Seq      uint64
	Data              []byte
	EndSession        bool
	EndOriginSessions bool
}

// Result of a committed and locally applied proposal.
type Result struct {
	Index, Term uint64
	Value       []byte
}

// Status is a point-in-time view of one group on this member.
type Status struct {
	Group   string
	ID      uint64
	Leader  uint64 // 0 when unknown
	Term    uint64
	State   string // StateFollower, StateLeader, StateCandidate, StatePreCandidate
	Applied uint64 // last entry applied to the StateMachine here
	Commit  uint64 // last committed index known here
	Members map[uint64]string
	// Learners are the members (in Members) that receive the log but do
	// not vote yet.
	Learners []uint64
	// CatchingUp: this member joined with an empty log and has not reached
	// the leader's commit index of its first contact yet; until then it
	// neither votes nor campaigns.
	CatchingUp bool
	// Sessions is the number of open sessions in the replicated
	// de-duplication table as of Applied (not yet ended or forgotten);
	// EndedSessions the ended ones kept as tombstones for
	// GroupConfig.SessionEndGrace entries.
	Sessions, EndedSessions int
}
