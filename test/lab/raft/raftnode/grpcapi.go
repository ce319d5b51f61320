package raftnode

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// The gRPC client API carries raw bytes (no generated code):
//
//	/smr.raftnode.KV/Propose  request = uvarint session, uvarint seq, data
//	                          reply   = uvarint index, value
//	/smr.raftnode.KV/Read     request = key; reply = value (after ReadIndex)
//
// Errors: FailedPrecondition = definitely not applied, Aborted = applied but
// the state machine returned an error, anything else = outcome unknown.
const (
	proposeMethod = "/smr.raftnode.KV/Propose"
	readMethod    = "/smr.raftnode.KV/Read"
)

type rawCodec struct{}

func (rawCodec) Name() string { return "smr-raw" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...) // gRPC may reuse data
	return nil
}

type kvServer struct {
	g  *raftcore.Group
	kv *kvtest.KV
}

var kvServiceDesc = grpc.ServiceDesc{
	ServiceName: "smr.raftnode.KV",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Propose", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			return srv.(*kvServer).propose(ctx, in)
		}},
		{MethodName: "Read", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			s := srv.(*kvServer)
			if _, err := s.g.ReadIndex(ctx); err != nil {
				return nil, toStatus(err)
			}
			out := []byte(s.kv.Get(string(in)))
			return &out, nil
		}},
	},
}

func (s *kvServer) propose(ctx context.Context, in []byte) (*[]byte, error) {
	session, n1 := binary.Uvarint(in)
	if n1 <= 0 {
		return nil, status.Error(codes.InvalidArgument, "bad session")
	}
	seq, n2 := binary.Uvarint(in[n1:])
	if n2 <= 0 {
		return nil, status.Error(codes.InvalidArgument, "bad seq")
	}
	res, err := s.g.Propose(ctx, raftcore.Proposal{Session: session, Seq: seq, Data: in[n1+n2:]})
	if err != nil {
		return nil, toStatus(err)
	}
	out := binary.AppendUvarint(make([]byte, 0, 10+len(res.Value)), res.Index)
	out = append(out, res.Value...)
	return &out, nil
}

func toStatus(err error) error {
	switch outcome(err) {
	case outcomeApplied:
		return status.Error(codes.Aborted, err.Error())
	case outcomeNone:
		return status.Error(codes.FailedPrecondition, err.Error())
	default:
		return status.Error(codes.Unavailable, err.Error())
	}
}

func serveGRPC(lis net.Listener, g *raftcore.Group, kv *kvtest.KV) *grpc.Server {
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.InitialWindowSize(1<<20), grpc.InitialConnWindowSize(8<<20))
	srv.RegisterService(&kvServiceDesc, &kvServer{g: g, kv: kv})
	go srv.Serve(lis)
	return srv
}

// GRPCClient talks to one raftnode's gRPC client API; it implements
// kvtest.Target.
type GRPCClient struct{ conn *grpc.ClientConn }

// DialGRPC connects (lazily) to a raftnode's -grpc address.
func DialGRPC(addr string) (*GRPCClient, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(8<<20),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return &GRPCClient{conn: conn}, nil
}

// Close closes the connection.
func (c *GRPCClient) Close() error { return c.conn.Close() }

// Propose implements kvtest.Target.
func (c *GRPCClient) Propose(ctx context.Context, p raftcore.Proposal) (raftcore.Result, error) {
	in := binary.AppendUvarint(make([]byte, 0, 20+len(p.Data)), p.Session)
	in = binary.AppendUvarint(in, p.Seq)
	in = append(in, p.Data...)
	var out []byte
	if err := c.conn.Invoke(ctx, proposeMethod, &in, &out); err != nil {
		return raftcore.Result{}, fromStatus(err)
	}
	idx, n := binary.Uvarint(out)
	if n <= 0 {
		return raftcore.Result{}, errors.New("raftnode: malformed propose reply")
	}
	return raftcore.Result{Index: idx, Value: out[n:]}, nil
}

// Read implements kvtest.Target.
func (c *GRPCClient) Read(ctx context.Context, key string) (string, error) {
	in := []byte(key)
	var out []byte
	if err := c.conn.Invoke(ctx, readMethod, &in, &out); err != nil {
		return "", fromStatus(err)
	}
	return string(out), nil
}

func fromStatus(err error) error {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.FailedPrecondition:
		return fmt.Errorf("%w: %s", raftcore.ErrNoLeader, st.Message())
	case codes.Aborted:
		return &raftcore.ApplyError{Msg: st.Message()}
	default:
		return fmt.Errorf("%w: %s", raftcore.ErrLeaderLost, st.Message())
	}
}
