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

// serviceDescs returns runtime.v1.RuntimeService and runtime.v1.ImageService
// as the proxy serves them: the hooked methods with their typed handlers
// (sandbox.go, served by srv), every other unary method with rawUnary. The
// streaming methods are left out on purpose: they, and any method a newer
// CRI adds, reach the UnknownServiceHandler (forward), which relays any kind
// of call. Registering unary methods, rather than sending everything through
// forward, uses gRPC's cheaper unary server path.
func (p *Proxy) serviceDescs() []*grpc.ServiceDesc {
	var descs []*grpc.ServiceDesc
	for _, sd := range []grpc.ServiceDesc{runtimeapi.RuntimeService_ServiceDesc, runtimeapi.ImageService_ServiceDesc} {
		d := sd
		d.Streams = nil
		d.Methods = nil
		if sd.ServiceName != runtimeapi.RuntimeService_ServiceDesc.ServiceName {
			// Only raw handlers, which ignore the registered server value.
			d.HandlerType = (*any)(nil)
		}
		for _, m := range sd.Methods {
			if sd.ServiceName == runtimeapi.RuntimeService_ServiceDesc.ServiceName && hookedMethods[m.MethodName] {
				d.Methods = append(d.Methods, m)
				continue
			}
			d.Methods = append(d.Methods, grpc.MethodDesc{MethodName: m.MethodName, Handler: p.rawUnary("/" + sd.ServiceName + "/" + m.MethodName)})
		}
		descs = append(descs, &d)
	}
	return descs
}

// rawUnary returns the handler that relays calls of the unary method (its
// full name) as raw bytes. The name and the interceptors' info are fixed at
// registration rather than looked up and built on every call.
func (p *Proxy) rawUnary(method string) grpc.MethodHandler {
	info := &grpc.UnaryServerInfo{Server: p, FullMethod: method}
	return func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		req := &frame{}
		if err := dec(req); err != nil {
			return nil, err
		}
		if interceptor == nil {
			return p.invokeRaw(ctx, method, req)
		}
		return interceptor(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return p.invokeRaw(ctx, method, req.(*frame))
		})
	}
}

func (p *Proxy) invokeRaw(ctx context.Context, method string, req *frame) (any, error) {
	resp := &frame{}
	var header, trailer metadata.MD
	callCtx, origin := withOrigin(outgoingContext(ctx))
	err := p.conn.Invoke(callCtx, method, req, resp, p.rawCall, grpc.Header(&header), grpc.Trailer(&trailer))
	req.free()
	if len(trailer) > 0 {
		_ = grpc.SetTrailer(ctx, trailer)
	}
	if err != nil {
		resp.free()
		return nil, p.runtimeErr(err, origin)
	}
	if len(header) > 0 {
		_ = grpc.SetHeader(ctx, header)
	}
	return resp, nil
}

// anyStream describes a forwarded stream of unknown kind.
var anyStream = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// forward is the grpc.UnknownServiceHandler: it relays one call of any kind
// (the CRI's streaming methods, methods of a newer CRI) to the runtime as raw
// bytes, with its metadata, and returns the runtime's headers, trailers and
// status.
func (p *Proxy) forward(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "smr-cri: no method name on the incoming stream")
	}
	return p.forwardStream(outgoingContext(ss.Context()), method, ss)
}

func (p *Proxy) forwardStream(ctx context.Context, method string, ss grpc.ServerStream) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the downstream stream when the caller's ends
	ctx, origin := withOrigin(ctx)
	cs, err := p.conn.NewStream(ctx, anyStream, method, p.rawCall)
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
