package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Snapshot transfers: a state of any size moves on its own client stream
// (/smr.raftcore.Raft/Snapshot): first a frame holding the MsgSnap (its
// sender is authorized like any raft message; the dialed server's
// certificate must prove it is the addressee), then the state file in
// chunks of snapChunkBytes, then the server's empty frame as the
// acknowledgement, sent only after the receiver checked the state and
// handed the MsgSnap to raft. One transfer never holds more than a chunk
// in memory on either side.
const (
	snapshotMethod = "/smr.raftcore.Raft/Snapshot"
	snapChunkBytes = 1 << 20
	// snapshotTimeout bounds one whole transfer.
	snapshotTimeout = time.Hour
)

var _ raftcore.SnapshotSender = (*GRPC)(nil)

// SendSnapshot implements raftcore.SnapshotSender.
func (t *GRPC) SendSnapshot(group string, to uint64, addr string, m *raftpb.Message, body raftcore.SnapshotBody) {
	p := t.peer(addr) // its credentials remember the server's certificate
	if p == nil {
		t.h.ReportSnapshot(group, to, false)
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		sent, err := t.sendSnapshot(p, group, to, m, body)
		if err != nil {
			t.log.Warn("raft transport: snapshot transfer failed", "addr", addr, "group", group, "to", to, "sent", sent, "err", err)
		}
		if body.Done != nil {
			body.Done(sent, err)
		}
		t.h.ReportSnapshot(group, to, err == nil)
	}()
}

func (t *GRPC) sendSnapshot(p *peer, group string, to uint64, m *raftpb.Message, body raftcore.SnapshotBody) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	go func() {
		select {
		case <-t.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn, err := t.dialOwn(p)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stream, err := conn.NewStream(ctx, &serviceDesc.Streams[1], snapshotMethod, grpc.WaitForReady(true))
	if err != nil {
		return 0, fmt.Errorf("open snapshot stream to %s: %w", p.addr, err)
	}
	if t.cfg.TLS != nil {
		if err := t.cfg.AuthorizePeer(p.serverCert.Load(), group, to); err != nil {
			return 0, fmt.Errorf("%w: %w", ErrPeerRefused, err)
		}
	}
	if err := stream.SendMsg(&frame{batches: []batch{{group: group, to: to, msgs: []*raftpb.Message{m}}}}); err != nil {
		return 0, fmt.Errorf("send snapshot header: %w", err)
	}
	f, err := body.Open()
	if err != nil {
		return 0, fmt.Errorf("open state: %w", err)
	}
	defer f.Close()
	var sent int64
	for {
		// A fresh buffer per chunk: gRPC may still hold the previous one
		// (the codec hands it the chunk's bytes without a copy).
		buf := make([]byte, snapChunkBytes)
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			if err := stream.SendMsg(&chunk{data: buf[:n]}); err != nil {
				return sent, fmt.Errorf("send snapshot chunk: %w", err)
			}
			sent += int64(n)
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return sent, fmt.Errorf("read state: %w", rerr)
		}
	}
	if err := stream.CloseSend(); err != nil {
		return sent, fmt.Errorf("close snapshot stream: %w", err)
	}
	if err := stream.RecvMsg(&frame{}); err != nil {
		return sent, fmt.Errorf("snapshot not accepted by %s: %w", p.addr, err)
	}
	return sent, nil
}

// serveSnapshot receives one snapshot transfer.
func (t *GRPC) serveSnapshot(stream grpc.ServerStream) error {
	var f frame
	if err := stream.RecvMsg(&f); err != nil {
		return err
	}
	if len(f.batches) != 1 || len(f.batches[0].msgs) != 1 || f.batches[0].msgs[0].GetType() != raftpb.MsgSnap {
		return status.Error(codes.InvalidArgument, "raft transport: a snapshot stream starts with one MsgSnap")
	}
	if err := t.authorizeIn(stream.Context(), &f); err != nil {
		return err
	}
	recv, ok := t.h.(raftcore.SnapshotReceiver)
	if !ok {
		return status.Error(codes.Unimplemented, "raft transport: this node does not receive snapshot streams")
	}
	pr, pw := io.Pipe()
	go func() {
		var c chunk
		for {
			err := stream.RecvMsg(&c)
			if errors.Is(err, io.EOF) {
				pw.Close()
				return
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := pw.Write(c.data); err != nil {
				return
			}
		}
	}()
	err := recv.ReceiveSnapshot(f.batches[0].group, f.batches[0].msgs[0], pr)
	pr.CloseWithError(errors.New("raft transport: snapshot receiver returned"))
	if err != nil {
		return status.Error(codes.Aborted, err.Error())
	}
	return stream.SendMsg(&frame{})
}

// dialOwn opens a connection of its own to p (a long transfer must not
// share, or hold up, the raft message stream).
func (t *GRPC) dialOwn(p *peer) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(p.clientCreds()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(codec{}))}
	if t.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(t.cfg.Dialer))
	}
	conn, err := grpc.NewClient("passthrough:///"+p.addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.addr, err)
	}
	return conn, nil
}
