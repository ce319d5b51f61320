package cri

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// unaryMethods lists the full names of the CRI methods known to be unary, so
// they take the cheaper unary path. Every other method (server-streaming ones
// like GetContainerEvents, and methods of a newer CRI) is forwarded as a
// bidirectional stream, which is correct for any kind of RPC.
var unaryMethods = func() map[string]bool {
	m := map[string]bool{}
	for _, sd := range []grpc.ServiceDesc{runtimeapi.RuntimeService_ServiceDesc, runtimeapi.ImageService_ServiceDesc} {
		for _, md := range sd.Methods {
			m["/"+sd.ServiceName+"/"+md.MethodName] = true
		}
	}
	return m
}()

// anyStream describes a forwarded stream of unknown kind.
var anyStream = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// forward is the grpc.UnknownServiceHandler: it relays one call of any method
// to the runtime as raw bytes, with its metadata, and returns the runtime's
// headers, trailers and status.
func (p *Proxy) forward(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "smr-cri: no method name on the incoming stream")
	}
	ctx := outgoingContext(ss.Context())
	if unaryMethods[method] {
		return p.forwardUnary(ctx, method, ss)
	}
	return p.forwardStream(ctx, method, ss)
}

func (p *Proxy) forwardUnary(ctx context.Context, method string, ss grpc.ServerStream) error {
	req := &frame{}
	if err := ss.RecvMsg(req); err != nil {
		return err
	}
	resp := &frame{}
	var header, trailer metadata.MD
	ctx, origin := withOrigin(ctx)
	err := p.conn.Invoke(ctx, method, req, resp, grpc.ForceCodecV2(p.codec), grpc.Header(&header), grpc.Trailer(&trailer))
	req.free()
	ss.SetTrailer(trailer)
	if err != nil {
		resp.free()
		return p.runtimeErr(err, origin)
	}
	if len(header) > 0 {
		if err := ss.SetHeader(header); err != nil {
			resp.free()
			return err
		}
	}
	return ss.SendMsg(resp)
}

func (p *Proxy) forwardStream(ctx context.Context, method string, ss grpc.ServerStream) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the downstream stream when the caller's ends
	ctx, origin := withOrigin(ctx)
	cs, err := p.conn.NewStream(ctx, anyStream, method, grpc.ForceCodecV2(p.codec))
	if err != nil {
		return p.runtimeErr(err, origin)
	}

	// Caller -> runtime. An error here (other than the caller's half-close)
	// ends the whole call through cancel.
	go func() {
		for {
			m := &frame{}
			if err := ss.RecvMsg(m); err != nil {
				if errors.Is(err, io.EOF) {
					_ = cs.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := cs.SendMsg(m); err != nil {
				m.free()
				// The runtime ended the stream; its status arrives on RecvMsg below.
				return
			}
		}
	}()

	// Runtime -> caller.
	header, err := cs.Header()
	if err == nil && len(header) > 0 {
		if err := ss.SendHeader(header); err != nil {
			return err
		}
	}
	for {
		m := &frame{}
		err := cs.RecvMsg(m)
		if errors.Is(err, io.EOF) {
			ss.SetTrailer(cs.Trailer())
			return nil
		}
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			return p.runtimeErr(err, origin)
		}
		if err := ss.SendMsg(m); err != nil {
			return err
		}
	}
}
