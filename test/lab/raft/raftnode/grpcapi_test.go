package raftnode

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestGRPCClientAPI(t *testing.T) {
	net0 := memnet.New()
	defer net0.Close()
	node, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: t.TempDir(), Transport: net0.Endpoint("a"), TickInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	kv := kvtest.NewKV()
	g, err := node.StartGroup(raftcore.GroupConfig{Name: "kv", SelfID: 1, Peers: map[uint64]string{1: "a"}}, kv)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := serveGRPC(lis, g, kv)
	defer srv.Stop()
	cl, err := DialGRPC(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The one member elects itself after an election timeout, longer on a
	// loaded machine than Propose's own short wait for a leader.
	for g.Status().Leader == 0 {
		if ctx.Err() != nil {
			t.Fatal("no leader elected within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	res, err := cl.Propose(ctx, raftcore.Proposal{Session: 1, Seq: 1, Data: kvtest.Op{Kind: "append", Key: "x", Value: "a"}.Encode()})
	if err != nil || string(res.Value) != "a" || res.Index == 0 {
		t.Fatalf("propose: %+v %v", res, err)
	}
	if v, err := cl.Read(ctx, "x"); err != nil || v != "a" {
		t.Fatalf("read: %q %v", v, err)
	}
	// A state machine error comes back as *ApplyError.
	var ae *raftcore.ApplyError
	if _, err := cl.Propose(ctx, raftcore.Proposal{Data: []byte("not json")}); !errors.As(err, &ae) {
		t.Fatalf("bad op: got %v, want ApplyError", err)
	}
	// Malformed request bytes are rejected before proposing.
	s := &kvServer{g: g, kv: kv}
	for _, in := range [][]byte{nil, {0x80}, {1, 0x80}} {
		if _, err := s.propose(ctx, in); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("propose(%v): got %v, want InvalidArgument", in, err)
		}
	}
}
