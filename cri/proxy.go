package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Options configure a Proxy.
type Options struct {
	// RuntimeEndpoint is the downstream CRI endpoint, e.g.
	// unix:///run/containerd/containerd.sock.
	RuntimeEndpoint string
	// Replicator receives labelled pods. Nil means a LoggingReplicator.
	Replicator Replicator
	// Log receives the proxy's own log lines. Nil discards them.
	Log *slog.Logger
	// ServerOptions are appended to the gRPC server options (tests,
	// interceptors for metrics).
	ServerOptions []grpc.ServerOption
}

// Proxy is the CRI proxy: a gRPC server forwarding to the runtime.
type Proxy struct {
	endpoint   string
	conn       *grpc.ClientConn
	runtime    runtimeapi.RuntimeServiceClient
	replicator Replicator
	log        *slog.Logger
	// rawCall makes a downstream call carry frames as raw bytes (rawCodec).
	// Built once: the option is an interface value, allocated when made.
	rawCall grpc.CallOption
	server  *grpc.Server
}

// New creates a proxy for the runtime at opts.RuntimeEndpoint. It does not
// connect yet: the runtime may be down and come up later.
func New(opts Options) (*Proxy, error) {
	target, err := ParseEndpoint(opts.RuntimeEndpoint)
	if err != nil {
		return nil, err
	}
	conn, err := dialRuntime(target, grpc.WithStatsHandler(originStats{}))
	if err != nil {
		return nil, err
	}
	codec := newRawCodec()
	p := &Proxy{
		endpoint:   target,
		conn:       conn,
		runtime:    runtimeapi.NewRuntimeServiceClient(conn),
		replicator: opts.Replicator,
		log:        opts.Log,
		rawCall:    grpc.ForceCodecV2(codec),
	}
	if p.log == nil {
		p.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if p.replicator == nil {
		p.replicator = NewLoggingReplicator(p.log)
	}
	sopts := append([]grpc.ServerOption{
		grpc.ForceServerCodecV2(codec),
		grpc.UnknownServiceHandler(p.forward),
		grpc.MaxRecvMsgSize(MaxMsgSize),
		grpc.MaxSendMsgSize(MaxMsgSize),
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(1 << 20),
		// Run calls on long-lived workers instead of a new goroutine per
		// call: a fresh goroutine's stack grows (copystack) on every call
		// through gRPC's handler path. When every worker is busy (long
		// streams such as GetContainerEvents) gRPC starts a goroutine as
		// before, so no call waits for a worker.
		grpc.NumStreamWorkers(uint32(max(4, runtime.GOMAXPROCS(0)))),
	}, opts.ServerOptions...)
	p.server = grpc.NewServer(sopts...)
	srv := &sandboxService{p: p}
	for _, sd := range p.serviceDescs() {
		p.server.RegisterService(sd, srv)
	}
	return p, nil
}

// CheckRuntime asks the runtime for its version, to log at start-up whether
// it is reachable. The proxy works either way.
func (p *Proxy) CheckRuntime(ctx context.Context) (*runtimeapi.VersionResponse, error) {
	ctx, origin := withOrigin(ctx)
	v, err := p.runtime.Version(ctx, &runtimeapi.VersionRequest{})
	return v, p.runtimeErr(err, origin)
}

// Endpoint is the gRPC target of the downstream runtime.
func (p *Proxy) Endpoint() string { return p.endpoint }

// Serve accepts CRI connections on lis until Shutdown. It returns nil after a
// shutdown.
func (p *Proxy) Serve(lis net.Listener) error {
	if err := p.server.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve CRI on %s: %w", lis.Addr(), err)
	}
	return nil
}

// Shutdown stops accepting calls and waits up to timeout for running ones
// (long streams such as GetContainerEvents never end by themselves), then
// cancels the rest and closes the runtime connection.
func (p *Proxy) Shutdown(timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		p.server.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		p.log.Warn("graceful stop timed out, cancelling remaining calls", "timeout", timeout)
		p.server.Stop()
		<-done
	}
	if err := p.conn.Close(); err != nil {
		p.log.Debug("close runtime connection", "error", err)
	}
}

// ServeContext serves on lis until ctx is done, then shuts down gracefully.
func (p *Proxy) ServeContext(ctx context.Context, lis net.Listener, shutdownTimeout time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(lis) }()
	select {
	case err := <-errc:
		p.Shutdown(shutdownTimeout)
		return err
	case <-ctx.Done():
		p.Shutdown(shutdownTimeout)
		return <-errc
	}
}
