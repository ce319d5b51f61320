package raftcore

import "go.etcd.io/raft/v3/raftpb"

// Transport moves raft messages between the nodes hosting a group. One
// Transport serves every group of a Node; messages carry the group name.
//
// Implementations: raftcore/transport (gRPC, one server per process) and
// raftcore/memnet (in-memory network with partition/drop/delay controls).
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
