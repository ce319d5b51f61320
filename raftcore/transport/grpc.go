// Package transport is the gRPC raftcore.Transport: one gRPC server per
// process receives the raft messages of every group (each batch names its
// group); to each peer address the node keeps one long-lived client stream
// fed by a bounded queue, writing several messages per stream message and
// reconnecting with backoff.
package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Config configures a GRPC transport.
type Config struct {
	// Listen is the address to serve on ("host:port"); "" means send-only.
	Listen string
	// Listener, if set, is served instead of opening Listen (e.g. a socket
	// opened inside a pod's network namespace). The transport owns it:
	// Close closes it. Listen must then be empty.
	Listener net.Listener
	// QueueLen bounds the messages queued per peer (default 4096); beyond
	// it messages are dropped and reported unreachable.
	QueueLen int
	// MaxFrameBytes caps how much is coalesced into one stream message
	// (default 4 MiB); a single larger raft message (a snapshot) is still
	// sent alone, up to maxMessageBytes.
	MaxFrameBytes int
	// PeerIdleTimeout retires the stream/goroutine of an address that had
	// nothing to send for this long (default 5m).
	PeerIdleTimeout time.Duration
	// Logger (nil discards).
	Logger *slog.Logger
	// TLS, if set, secures both the server and the streams to peers (e.g.
	// pki.TLSConfig: mutual TLS with the cluster CA). nil is plaintext.
	TLS *tls.Config
	// AuthorizePeer (required with TLS) binds raft messages to the peer's
	// certificate: see AuthorizeFunc. A stream carrying a message the
	// certificate does not authorize is closed before any of its frame
	// reaches raft.
	AuthorizePeer AuthorizeFunc
	// Dialer, if set, opens the connections to peers (e.g. from inside a
	// pod's network namespace, so that peers and NetworkPolicies see the
	// pod's address as the source). nil dials from the process's own netns.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// Advertise is the address ("host:port") peers reach this transport
	// at, announced on every stream it opens so that peers learn where this
	// member listens now (see advertise.go). "" means the listener's
	// address when it names one IP; a send-only or wildcard transport then
	// announces nothing.
	Advertise string
	// NoAdvertise announces no address at all: peers reach this member
	// only where they were told (e.g. a test that routes every link
	// through a proxy of its own, which a learned address would bypass).
	NoAdvertise bool
}

// GRPC implements raftcore.Transport over gRPC.
type GRPC struct {
	cfg  Config
	log  *slog.Logger
	h    raftcore.Handler
	lis  net.Listener
	srv  *grpc.Server
	mu   sync.Mutex
	pmap map[string]*peer
	done chan struct{}
	wg   sync.WaitGroup

	// learner, if the handler is one, is told the addresses peers
	// announce; advertise is what this transport announces (advertise.go).
	learner   raftcore.PeerAddrLearner
	advertise string
}

// New validates cfg and, if cfg.Listen is set, binds the listener (so the
// caller learns a ":0" port via Addr before Start).
func New(cfg Config) (*GRPC, error) {
	if cfg.QueueLen < 0 || cfg.MaxFrameBytes < 0 || cfg.PeerIdleTimeout < 0 {
		return nil, fmt.Errorf("transport: negative QueueLen, MaxFrameBytes or PeerIdleTimeout")
	}
	if cfg.PeerIdleTimeout == 0 {
		cfg.PeerIdleTimeout = 5 * time.Minute
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 4096
	}
	if cfg.MaxFrameBytes == 0 {
		cfg.MaxFrameBytes = 4 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.validateTLS(); err != nil {
		return nil, err
	}
	if cfg.Listener != nil && cfg.Listen != "" {
		return nil, fmt.Errorf("transport: set Listen or Listener, not both")
	}
	t := &GRPC{cfg: cfg, log: cfg.Logger, pmap: map[string]*peer{}, done: make(chan struct{}), lis: cfg.Listener}
	if cfg.Listen != "" {
		lis, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("transport: listen %s: %w", cfg.Listen, err)
		}
		t.lis = lis
	}
	t.advertise = cfg.Advertise
	switch {
	case cfg.NoAdvertise:
		t.advertise = ""
	case t.advertise == "":
		t.advertise = defaultAdvertise(t.lis)
	default:
		err := checkAdvertise(t.advertise)
		if err == nil {
			break
		}
		if t.lis != nil {
			_ = t.lis.Close()
		}
		return nil, fmt.Errorf("transport: Advertise: %w", err)
	}
	return t, nil
}

// Addr is the bound listen address ("" when send-only).
func (t *GRPC) Addr() string {
	if t.lis == nil {
		return ""
	}
	return t.lis.Addr().String()
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: "smr.raftcore.Raft",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Send",
		ClientStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			return srv.(*GRPC).serveStream(stream)
		},
	}, {
		StreamName:    "Snapshot",
		ClientStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			return srv.(*GRPC).serveSnapshot(stream)
		},
	}, {
		StreamName:    "FetchState",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			return srv.(*GRPC).serveState(stream)
		},
	}},
}

const sendMethod = "/smr.raftcore.Raft/Send"

const (
	windowSize      = 8 << 20
	maxMessageBytes = 1 << 30 // snapshots travel as one message
)

// Start implements raftcore.Transport.
func (t *GRPC) Start(h raftcore.Handler) error {
	t.h = h
	t.learner, _ = h.(raftcore.PeerAddrLearner)
	if t.lis == nil {
		return nil
	}
	// Fixed, large flow-control windows: this also turns off gRPC's BDP
	// probing pings, which would cost extra writes per raft message.
	t.srv = grpc.NewServer(t.serverCreds(), grpc.ForceServerCodec(codec{}), grpc.MaxRecvMsgSize(maxMessageBytes),
		grpc.InitialWindowSize(windowSize), grpc.InitialConnWindowSize(windowSize))
	t.srv.RegisterService(&serviceDesc, t)
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		if err := t.srv.Serve(t.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.log.Error("raft transport server stopped", "err", err)
		}
	}()
	return nil
}

func (t *GRPC) serveStream(stream grpc.ServerStream) error {
	learn := t.newStreamLearner(stream.Context())
	for {
		var f frame
		if err := stream.RecvMsg(&f); err != nil {
			if errors.Is(err, io.EOF) {
				return stream.SendMsg(&frame{})
			}
			return err
		}
		if err := t.authorizeIn(stream.Context(), &f); err != nil {
			return err
		}
		learn.learn(&f)
		for _, b := range f.batches {
			t.h.Deliver(b.group, b.msgs)
		}
	}
}

// Send implements raftcore.Transport; it never blocks.
func (t *GRPC) Send(group string, to uint64, addr string, msgs []*raftpb.Message) {
	p := t.peer(addr)
	if p == nil {
		return
	}
	select {
	case p.q <- batch{group: group, to: to, msgs: msgs}:
	default:
		t.dropped(batch{group: group, to: to, msgs: msgs})
	}
}

// dropped reports lost messages to raft so it probes / retries snapshots.
func (t *GRPC) dropped(b batch) {
	t.h.ReportUnreachable(b.group, b.to)
	for _, m := range b.msgs {
		if m.GetType() == raftpb.MsgSnap {
			t.h.ReportSnapshot(b.group, b.to, false)
		}
	}
}

func (t *GRPC) peer(addr string) *peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.done:
		return nil
	default:
	}
	p, ok := t.pmap[addr]
	if !ok {
		p = &peer{t: t, addr: addr, q: make(chan batch, max(1, t.cfg.QueueLen/8))}
		t.pmap[addr] = p
		t.wg.Add(1)
		go p.run()
	}
	return p
}

// Close implements raftcore.Transport.
func (t *GRPC) Close() error {
	t.mu.Lock()
	select {
	case <-t.done:
		t.mu.Unlock()
		return nil
	default:
	}
	close(t.done)
	t.mu.Unlock()
	if t.srv != nil {
		t.srv.Stop()
	} else if t.lis != nil {
		_ = t.lis.Close() // never served (Start not called)
	}
	t.wg.Wait()
	return nil
}

// peer owns the stream to one address. Its queue holds batches (the
// messages of one Ready for one member); QueueLen/8 batches bound memory.
type peer struct {
	t        *GRPC
	addr     string
	q        chan batch
	lastUsed time.Time // last batch taken from q; owned by run()
	// serverCert is the certificate of the last TLS handshake with addr.
	serverCert  atomic.Pointer[x509.Certificate]
	lastRefusal string // last AuthorizePeer error logged; owned by run()
}

func (p *peer) run() {
	defer p.t.wg.Done()
	backoff := 50 * time.Millisecond
	var conn *grpc.ClientConn
	var downSince time.Time // zero while the last stream opened
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	p.lastUsed = time.Now()
	for {
		// A peer that stays unreachable and unused (an address replaced by
		// SetPeerAddr) stops reconnecting.
		if time.Since(p.lastUsed) > p.t.cfg.PeerIdleTimeout && p.retireIfIdle() {
			return
		}
		if conn == nil {
			opts := []grpc.DialOption{grpc.WithTransportCredentials(p.clientCreds()),
				grpc.WithConnectParams(connectParams),
				grpc.WithInitialWindowSize(windowSize), grpc.WithInitialConnWindowSize(windowSize),
				grpc.WithDefaultCallOptions(grpc.ForceCodec(codec{}), grpc.MaxCallSendMsgSize(maxMessageBytes))}
			if p.t.cfg.Dialer != nil {
				opts = append(opts, grpc.WithContextDialer(p.t.cfg.Dialer))
			}
			c, err := grpc.NewClient("passthrough:///"+p.addr, opts...)
			if err != nil {
				p.t.log.Error("raft transport: bad peer address", "addr", p.addr, "err", err)
				if !p.failFor(time.Second) {
					return
				}
				continue
			}
			conn = c
		}
		ctx, cancel := context.WithCancel(p.t.announce(context.Background()))
		stream, err := conn.NewStream(ctx, &serviceDesc.Streams[0], sendMethod)
		if err == nil {
			if !downSince.IsZero() {
				p.t.log.Info("raft peer reachable again", "addr", p.addr, "after", time.Since(downSince).Round(time.Millisecond).String())
				downSince = time.Time{}
			}
			err = p.pump(stream)
		}
		cancel()
		if errors.Is(err, errIdle) {
			return
		}
		select {
		case <-p.t.done:
			return
		default:
		}
		if downSince.IsZero() {
			// Once per outage, so that a dump shows why a member was not
			// reached; the retries are at debug level.
			p.t.log.Warn("raft peer unreachable", "addr", p.addr, "err", err)
			downSince = time.Now()
		}
		p.t.log.Debug("raft stream down", "addr", p.addr, "err", err, "backoff", backoff)
		if !p.failFor(backoff) {
			return
		}
		backoff = min(2*backoff, 2*time.Second)
		if err == nil {
			backoff = 50 * time.Millisecond
		}
	}
}

// connectParams bound how long a peer that was down for a while stays
// unreached once it is back. gRPC's defaults back off up to 2 minutes
// between connection attempts and let one attempt wait 20 s for a SYN that
// was lost (a node whose network comes up after its pods): a member whose
// node restarted could stay cut off for a minute after its network
// returned. Raft needs the peer at its next heartbeat; an attempt every 2 s
// at most costs nothing.
var connectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
	MinConnectTimeout: 5 * time.Second,
}

// failFor drops (and reports) whatever is queued for d, so raft does not
// wait on a backlog for a peer that is down. It returns false on Close.
func (p *peer) failFor(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-p.t.done:
			return false
		case b := <-p.q:
			p.lastUsed = time.Now()
			p.t.dropped(b)
		case <-timer.C:
			return true
		}
	}
}

// errIdle ends a peer that had nothing to send for PeerIdleTimeout (e.g.
// an address that is no longer used after SetPeerAddr).
var errIdle = errors.New("peer idle")

// retireIfIdle removes the peer from the transport if its queue is empty;
// a later Send to the address starts a fresh peer.
func (p *peer) retireIfIdle() bool {
	p.t.mu.Lock()
	defer p.t.mu.Unlock()
	if len(p.q) > 0 {
		return false
	}
	if p.t.pmap[p.addr] == p {
		delete(p.t.pmap, p.addr)
	}
	return true
}

// pump writes queued batches to the stream, coalescing everything queued
// (up to MaxFrameBytes) into one stream message.
func (p *peer) pump(stream grpc.ClientStream) error {
	defer stream.CloseSend()
	var f frame
	idle := time.NewTimer(p.t.cfg.PeerIdleTimeout)
	defer idle.Stop()
	for {
		f.batches = f.batches[:0]
		select {
		case <-p.t.done:
			return nil
		case <-idle.C:
			if p.retireIfIdle() {
				return errIdle
			}
			idle.Reset(p.t.cfg.PeerIdleTimeout)
			continue
		case b := <-p.q:
			f.batches = append(f.batches, b)
			p.lastUsed = time.Now()
			idle.Reset(p.t.cfg.PeerIdleTimeout)
		}
		size := approxSize(f.batches[0])
	more:
		for size < p.t.cfg.MaxFrameBytes {
			select {
			case b := <-p.q:
				f.batches = append(f.batches, b)
				size += approxSize(b)
			default:
				break more
			}
		}
		if f.batches = p.authorizeOut(f.batches); len(f.batches) == 0 {
			continue
		}
		if err := stream.SendMsg(&f); err != nil {
			for _, b := range f.batches {
				p.t.dropped(b)
			}
			return fmt.Errorf("send to %s: %w", p.addr, err)
		}
		for _, b := range f.batches {
			for _, m := range b.msgs {
				if m.GetType() == raftpb.MsgSnap {
					p.t.h.ReportSnapshot(b.group, b.to, true)
				}
			}
		}
	}
}

func approxSize(b batch) int {
	n := len(b.group) + 8
	for _, m := range b.msgs {
		n += 64 + len(m.GetSnapshot().GetData())
		for _, e := range m.GetEntries() {
			n += 24 + len(e.GetData())
		}
	}
	return n
}
