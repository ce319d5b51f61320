package raftcore

import "errors"

// Typed errors returned by Group and Node methods. Wrapped errors keep these
// as their cause, so callers test them with errors.Is.
var (
	// ErrNoLeader means the group has no known leader (election in progress,
	// or this member is cut off from a quorum). The request was NOT proposed;
	// retrying later is safe.
	ErrNoLeader = errors.New("raftcore: group has no leader")
	// ErrLeaderLost means leadership changed or was lost while the request was
	// in flight. The outcome is UNKNOWN: the entry may still commit. Retry
	// with the same (Session, Seq) to get the first result exactly once.
	ErrLeaderLost = errors.New("raftcore: leader lost while request was pending (outcome unknown)")
	// ErrGroupFull means too many requests are pending on this member; the
	// request was not proposed.
	ErrGroupFull = errors.New("raftcore: too many pending requests")
	// ErrStopped means the group or node was closed (or this member was
	// removed from the group).
	ErrStopped = errors.New("raftcore: stopped")
	// ErrTimeout means the caller's context ended before the request
	// finished. It wraps the context error as well. The outcome of a
	// proposal is UNKNOWN.
	ErrTimeout = errors.New("raftcore: timed out")
	// ErrTooLarge means a proposal exceeds the configured maximum size.
	ErrTooLarge = errors.New("raftcore: proposal too large")
	// ErrStaleSeq means a proposal's Seq is older than the last one applied
	// for its Session, and its result is no longer stored.
	ErrStaleSeq = errors.New("raftcore: stale session sequence")
	// ErrInvalidConfig is returned for bad NodeConfig/GroupConfig values.
	ErrInvalidConfig = errors.New("raftcore: invalid config")
	// ErrGroupExists is returned by StartGroup for a name already started.
	ErrGroupExists = errors.New("raftcore: group already started")
)

// ApplyError carries an error returned by StateMachine.Apply back to the
// proposer. The entry counts as applied (the error is deterministic and was
// produced on every member).
type ApplyError struct{ Msg string }

func (e *ApplyError) Error() string { return "raftcore: apply: " + e.Msg }
