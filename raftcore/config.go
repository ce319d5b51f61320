package raftcore

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"
)

// NodeConfig configures the process-wide ordering node.
type NodeConfig struct {
	// DataDir holds one sub-directory per group (<DataDir>/<group>/{wal,snap}).
	DataDir string
	// Transport carries raft messages between members of all groups.
	Transport Transport
	// Logger receives raft and raftcore logs; nil discards them.
	Logger *slog.Logger
	// TickInterval is the raft logical clock period (default 100ms).
	TickInterval time.Duration
	// ElectionTicks (default 10) and HeartbeatTicks (default 1) are in ticks.
	ElectionTicks  int
	HeartbeatTicks int
	// MaxPending bounds proposals+reads waiting on one member of a group
	// (default 8192); beyond it callers get ErrGroupFull.
	MaxPending int
	// MaxProposalBytes bounds one proposal's payload (default 4 MiB).
	MaxProposalBytes int
	// MaxInflightMsgs is raft's append pipelining window (default 256).
	MaxInflightMsgs int
	// UnsafeNoFsync disables WAL fsync (tests/benchmarks of CPU cost only).
	UnsafeNoFsync bool
	// Metrics, from NewMetrics; nil records nothing.
	Metrics *Metrics
}

// GroupConfig configures one raft group hosted on this node.
type GroupConfig struct {
	// Name identifies the group on every member; [A-Za-z0-9._-]{1,128}.
	Name string
	// SelfID is this member's stable id (>0), e.g. StatefulSet ordinal + 1.
	SelfID uint64
	// Peers maps member id -> transport address, including SelfID. On first
	// start (and Join=false) it is the initial membership; afterwards the
	// membership comes from the log and Peers only supplies addresses.
	Peers map[uint64]string
	// Join starts with an empty log and waits to be contacted by the leader
	// (after AddMember on an existing member). Also use it to rejoin with
	// the same id after the member's disk state was lost.
	Join bool
	// CatchUpBeforeVoting (with Join, on an empty log) quarantines the
	// member until it applied the commit index the leader announced first:
	// it casts no vote and never campaigns before (rejoin.go). Set it when
	// the member may have been a voter whose disk was lost; leave it off
	// only where the group cannot form without this member's vote (a
	// member of a group that is being created).
	CatchUpBeforeVoting bool
	// SnapshotEvery takes a snapshot and compacts the log every N applied
	// entries when the StateMachine implements Snapshotter (0 = never).
	SnapshotEvery uint64
	// SnapshotBytes also takes a snapshot once this many bytes of log were
	// applied since the last one (0 = no byte bound); only with
	// SnapshotEvery > 0.
	SnapshotBytes uint64
	// SessionRetention forgets the de-duplication state of a session that
	// had no request in the last N log entries (default 1<<20), so the
	// session table does not grow with every client connection ever seen.
	// It must be equal on every member (it changes replicated state).
	SessionRetention uint64
	// SessionEndGrace is how many log entries an ended session
	// (Proposal.EndSession, EndOriginSessions) stays in the table as a
	// tombstone that still refuses late copies of its proposals, e.g. a
	// forwarded proposal that reached the leader after its retry (default
	// 65536). It must be equal on every member.
	SessionEndGrace uint64
}

var groupNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

func (c *NodeConfig) withDefaults() (NodeConfig, error) {
	out := *c
	if out.DataDir == "" {
		return out, fmt.Errorf("%w: DataDir is empty", ErrInvalidConfig)
	}
	if out.Transport == nil {
		return out, fmt.Errorf("%w: Transport is nil", ErrInvalidConfig)
	}
	if out.TickInterval < 0 || out.ElectionTicks < 0 || out.HeartbeatTicks < 0 || out.MaxPending < 0 ||
		out.MaxProposalBytes < 0 || out.MaxInflightMsgs < 0 {
		return out, fmt.Errorf("%w: negative value", ErrInvalidConfig)
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	if out.TickInterval == 0 {
		out.TickInterval = 100 * time.Millisecond
	}
	if out.HeartbeatTicks == 0 {
		out.HeartbeatTicks = 1
	}
	if out.ElectionTicks == 0 {
		out.ElectionTicks = 10
	}
	if out.ElectionTicks <= out.HeartbeatTicks {
		return out, fmt.Errorf("%w: ElectionTicks %d must exceed HeartbeatTicks %d",
			ErrInvalidConfig, out.ElectionTicks, out.HeartbeatTicks)
	}
	if out.MaxPending == 0 {
		out.MaxPending = 8192
	}
	if out.MaxProposalBytes == 0 {
		out.MaxProposalBytes = 4 << 20
	}
	if out.MaxInflightMsgs == 0 {
		out.MaxInflightMsgs = 256
	}
	return out, nil
}

func (c *GroupConfig) validate() error {
	if !groupNameRE.MatchString(c.Name) {
		return fmt.Errorf("%w: group name %q must match %s", ErrInvalidConfig, c.Name, groupNameRE)
	}
	if c.SelfID == 0 {
		return fmt.Errorf("%w: group %s: SelfID must be > 0", ErrInvalidConfig, c.Name)
	}
	if _, ok := c.Peers[c.SelfID]; !ok {
		return fmt.Errorf("%w: group %s: Peers must contain SelfID %d", ErrInvalidConfig, c.Name, c.SelfID)
	}
	for id, addr := range c.Peers {
		if id == 0 {
			return fmt.Errorf("%w: group %s: member id 0 is reserved", ErrInvalidConfig, c.Name)
		}
		if addr == "" {
			return fmt.Errorf("%w: group %s: member %d has an empty address", ErrInvalidConfig, c.Name, id)
		}
	}
	return nil
}
