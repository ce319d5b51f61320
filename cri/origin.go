package cri

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc/stats"
)

// The proxy must tell an Unavailable status sent by the runtime (passed on
// unchanged) from one made up by gRPC because the runtime could not be
// reached (reported as "smr-cri: container runtime ... unavailable"). The
// connection state cannot tell: a runtime that just died still looks Ready
// for a moment. A status from the runtime always arrives in trailers, so
// originStats, a client stats handler, marks the calls that received them.

// callOrigin is attached to the context of each downstream call.
type callOrigin struct {
	gotTrailer atomic.Bool
}

type originKey struct{}

func withOrigin(ctx context.Context) (context.Context, *callOrigin) {
	o := &callOrigin{}
	return context.WithValue(ctx, originKey{}, o), o
}

// fromRuntime reports whether the call's status was sent by the runtime.
func (o *callOrigin) fromRuntime() bool { return o != nil && o.gotTrailer.Load() }

type originStats struct{}

var _ stats.Handler = originStats{}

func (originStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (originStats) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.InTrailer); !ok {
		return
	}
	if o, ok := ctx.Value(originKey{}).(*callOrigin); ok {
		o.gotTrailer.Store(true)
	}
}

func (originStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (originStats) HandleConn(context.Context, stats.ConnStats) {}
