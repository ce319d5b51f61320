package cri

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MaxMsgSize bounds one message in either direction. It is larger than the
// 16 MiB that kubelet and containerd use, so a size limit is always enforced
// by the real endpoints and their errors reach the caller unchanged.
const MaxMsgSize = 64 << 20

// ErrBadEndpoint is returned for a runtime endpoint the proxy cannot dial.
var ErrBadEndpoint = errors.New("bad runtime endpoint")

// ParseEndpoint validates a CRI runtime endpoint and returns it as a gRPC
// target. Only unix sockets are supported, as by kubelet on Linux:
// "unix:///run/containerd/containerd.sock" or an absolute path.
func ParseEndpoint(endpoint string) (string, error) {
	path, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok {
		if strings.Contains(endpoint, "://") {
			return "", fmt.Errorf("%w %q: only unix:// endpoints are supported", ErrBadEndpoint, endpoint)
		}
		path = endpoint
	}
	if path == "" {
		return "", fmt.Errorf("%w %q: empty socket path", ErrBadEndpoint, endpoint)
	}
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%w %q: socket path must be absolute (unix:///path/to/sock)", ErrBadEndpoint, endpoint)
	}
	return "unix://" + filepath.Clean(path), nil
}

// DialRuntime creates smr-cri's one kind of client connection to the
// container runtime at endpoint (validated by ParseEndpoint), used by the
// proxy for the calls it forwards and by the daemon for its own calls. It
// never blocks: the connection is made lazily and re-made after failures with
// a short backoff, so both follow containerd restarts by themselves. extra
// adds options (the proxy adds its stats handler).
func DialRuntime(endpoint string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	target, err := ParseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	return dialRuntime(target, extra...)
}

func dialRuntime(target string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			// gRPC's default backoff grows to 120s; a local runtime that
			// restarts should be picked up within about a second.
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMsgSize),
			grpc.MaxCallSendMsgSize(MaxMsgSize),
			// Fail fast (never wait-for-ready): kubelet must see Unavailable
			// at once when containerd is down, not a hung call.
			grpc.WaitForReady(false),
		),
		grpc.WithInitialWindowSize(1 << 20),
		grpc.WithInitialConnWindowSize(1 << 20),
	}, extra...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("create client for runtime %s: %w", target, err)
	}
	return conn, nil
}

// runtimeErr turns an error of a downstream call into the error returned to
// the caller. Errors the runtime sent (origin saw its trailers) pass through
// unchanged: same code, same message, same details. Only an Unavailable made
// up by gRPC because the runtime could not be reached gets a message naming
// smr-cri and the endpoint, keeping the code.
func (p *Proxy) runtimeErr(err error, origin *callOrigin) error {
	if err == nil || origin.fromRuntime() {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return status.Errorf(codes.Unknown, "smr-cri: call to container runtime at %s: %v", p.endpoint, err)
	}
	if st.Code() != codes.Unavailable {
		return err
	}
	if p.conn.GetState() == connectivity.TransientFailure {
		// Skip the remaining backoff: the next call then finds the runtime
		// as soon as it is back.
		p.conn.ResetConnectBackoff()
	}
	return status.Errorf(codes.Unavailable, "smr-cri: container runtime at %s unavailable: %s", p.endpoint, st.Message())
}

// outgoingContext copies the caller's metadata onto the downstream call.
// Transport-level keys are left to gRPC. Deadline and cancellation come with
// ctx itself.
func outgoingContext(ctx context.Context) context.Context {
	// FromIncomingContext already returns a copy of its own: filter it in
	// place rather than copying it a second time on every call.
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md) == 0 {
		return ctx
	}
	for k := range md {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") {
			delete(md, k)
			continue
		}
		switch k {
		case "content-type", "user-agent", "te":
			delete(md, k)
		}
	}
	return metadata.NewOutgoingContext(ctx, md)
}
