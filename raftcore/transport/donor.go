package transport

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/smr-io/smr-cri/raftcore"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Donor snapshots (/smr.raftcore.Raft/FetchState): the requester sends one
// frame holding a MsgSnap without a snapshot, From itself, To the donor,
// Index the lowest snapshot index it can use (authorized like any raft
// message: the requester's certificate must name it a member of the
// group, and the dialed server's must name the donor); the donor answers
// with one frame holding a MsgSnap with its snapshot (metadata and
// reference of the state file), then the state file in chunks.
const fetchStateMethod = "/smr.raftcore.Raft/FetchState"

var _ raftcore.StateFetcher = (*GRPC)(nil)

// FetchState implements raftcore.StateFetcher.
func (t *GRPC) FetchState(ctx context.Context, group string, from, to uint64, addr string, minIndex uint64) (*raftpb.Snapshot, io.ReadCloser, error) {
	p := t.peer(addr)
	if p == nil {
		return nil, nil, fmt.Errorf("raft transport: closed")
	}
	conn, err := t.dialOwn(p)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	fail := func(err error) (*raftpb.Snapshot, io.ReadCloser, error) {
		cancel()
		conn.Close()
		return nil, nil, err
	}
	stream, err := conn.NewStream(ctx, &serviceDesc.Streams[2], fetchStateMethod, grpc.WaitForReady(true))
	if err != nil {
		return fail(fmt.Errorf("open state stream to %s: %w", addr, err))
	}
	req := &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: &from, To: &to, Index: &minIndex}
	if err := stream.SendMsg(&frame{batches: []batch{{group: group, to: to, msgs: []*raftpb.Message{req}}}}); err != nil {
		return fail(fmt.Errorf("send state request: %w", err))
	}
	if err := stream.CloseSend(); err != nil {
		return fail(fmt.Errorf("send state request: %w", err))
	}
	var head frame
	if err := stream.RecvMsg(&head); err != nil {
		return fail(fmt.Errorf("state from %s: %w", addr, err))
	}
	// The server's certificate is known once the stream has answered.
	if t.cfg.TLS != nil {
		if err := t.cfg.AuthorizePeer(p.serverCert.Load(), group, to); err != nil {
			return fail(fmt.Errorf("%w: %w", ErrPeerRefused, err))
		}
	}
	if len(head.batches) != 1 || len(head.batches[0].msgs) != 1 || head.batches[0].msgs[0].GetSnapshot() == nil {
		return fail(fmt.Errorf("state from %s: %w: the answer holds no snapshot", addr, errBadFrame))
	}
	return head.batches[0].msgs[0].GetSnapshot(), &chunkStream{stream: stream, close: func() { cancel(); conn.Close() }}, nil
}

// chunkStream reads a stream of chunks as bytes.
type chunkStream struct {
	stream grpc.ClientStream
	c      chunk
	rest   []byte
	close  func()
}

func (r *chunkStream) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		if err := r.stream.RecvMsg(&r.c); err != nil {
			return 0, err // io.EOF when the donor is done
		}
		r.rest = r.c.data
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

func (r *chunkStream) Close() error {
	r.close()
	return nil
}

// serveState answers one FetchState request.
func (t *GRPC) serveState(stream grpc.ServerStream) error {
	var f frame
	if err := stream.RecvMsg(&f); err != nil {
		return err
	}
	if len(f.batches) != 1 || len(f.batches[0].msgs) != 1 || f.batches[0].msgs[0].GetType() != raftpb.MsgSnap ||
		f.batches[0].msgs[0].GetSnapshot() != nil {
		return status.Error(codes.InvalidArgument, "raft transport: a state request is one MsgSnap without a snapshot")
	}
	if err := t.authorizeIn(stream.Context(), &f); err != nil {
		return err
	}
	srv, ok := t.h.(raftcore.StateServer)
	if !ok {
		return status.Error(codes.Unimplemented, "raft transport: this node does not serve states")
	}
	group, req := f.batches[0].group, f.batches[0].msgs[0]
	snap, body, err := srv.OpenState(stream.Context(), group, req.GetFrom(), req.GetIndex())
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	defer body.Close()
	from, to := req.GetTo(), req.GetFrom()
	head := &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: &from, To: &to, Snapshot: snap}
	if err := stream.SendMsg(&frame{batches: []batch{{group: group, to: to, msgs: []*raftpb.Message{head}}}}); err != nil {
		return err
	}
	for {
		buf := make([]byte, snapChunkBytes) // gRPC may still hold the previous one
		n, rerr := io.ReadFull(body, buf)
		if n > 0 {
			if err := stream.SendMsg(&chunk{data: buf[:n]}); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			return nil
		}
		if rerr != nil {
			return status.Error(codes.Internal, fmt.Sprintf("raft transport: read state: %v", rerr))
		}
	}
}
