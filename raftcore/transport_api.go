package raftcore

import (
	"context"
	"io"

	"go.etcd.io/raft/v3/raftpb"
)

// Transport moves raft messages between the nodes hosting a group. One
// Transport serves every group of a Node; messages carry the group name.
//
// Implementations: raftcore/transport (gRPC, one server per process) and
// test/lab/raft/memnet (in-memory network with partition/drop/delay controls).
type Transport interface {
	// Start registers the handler that receives inbound messages and
	// delivery reports. It is called once by NewNode.
	Start(h Handler) error
	// Send queues msgs, all addressed to member `to` of `group` at `addr`.
	// It must never block: when the per-peer queue is full the messages are
	// dropped and reported through Handler.ReportUnreachable (and
	// ReportSnapshot for MsgSnap). The transport owns msgs after the call.
	Send(group string, to uint64, addr string, msgs []*raftpb.Message)
	// Close stops sending and receiving.
	Close() error
}

// Handler is implemented by *Node; transports call it from their own
// goroutines. None of its methods block.
type Handler interface {
	// Deliver hands inbound messages of one group to that group.
	Deliver(group string, msgs []*raftpb.Message)
	// ReportUnreachable tells the group that messages to `to` were lost.
	ReportUnreachable(group string, to uint64)
	// ReportSnapshot tells the group whether a MsgSnap to `to` was sent.
	ReportSnapshot(group string, to uint64, ok bool)
}

// SnapshotSender is implemented by transports that carry a snapshot's state
// file to a member as a stream of chunks (the gRPC transport, memnet), so a
// state of any size never has to fit in one message. A group hands a MsgSnap
// whose state lives in a file to SendSnapshot instead of Send; with a
// transport that lacks it, the state is inlined into the MsgSnap.
type SnapshotSender interface {
	// SendSnapshot must not block: the transfer runs on its own goroutine,
	// and ends with body.Done and then Handler.ReportSnapshot. Only a peer
	// authorized as member `to` of `group` may receive it.
	SendSnapshot(group string, to uint64, addr string, m *raftpb.Message, body SnapshotBody)
}

// SnapshotBody is the state file of a MsgSnap.
type SnapshotBody struct {
	Size int64
	Open func() (io.ReadCloser, error)
	// Done, if set, is called once with the bytes sent and the outcome.
	Done func(sent int64, err error)
}

// SnapshotReceiver is implemented by *Node (the Handler transports get):
// ReceiveSnapshot reads the state of MsgSnap m from body, checks it against
// the snapshot's reference (size, SHA-256), keeps it as the group's state
// file and only then hands m to raft. It blocks until body is consumed.
type SnapshotReceiver interface {
	ReceiveSnapshot(group string, m *raftpb.Message, body io.Reader) error
}

// StateFetcher is implemented by transports that pull another member's
// latest snapshot (the gRPC transport): a member whose state machine turned
// out wrong (an audit found its app diverged) cannot trust its own
// snapshots, which may have been taken after it diverged, and is rebuilt
// from a healthy member's instead. Only a peer authorized as member `to`
// of group may answer, and only an authorized member `from` is served.
type StateFetcher interface {
	// FetchState returns member to's latest snapshot at or after minIndex
	// (its metadata and session table, as raft keeps it) and its state
	// file's bytes; the caller closes the body.
	FetchState(ctx context.Context, group string, from, to uint64, addr string, minIndex uint64) (*raftpb.Snapshot, io.ReadCloser, error)
}

// StateServer is implemented by *Node (the Handler transports get): it
// answers a StateFetcher's request with the group's latest snapshot at or
// after minIndex, asking the group for a new one when its latest is older.
type StateServer interface {
	OpenState(ctx context.Context, group string, requester, minIndex uint64) (*raftpb.Snapshot, io.ReadCloser, error)
}
