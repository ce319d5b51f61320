package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc/metadata"
	grpcpeer "google.golang.org/grpc/peer"
)

// Address announcement: every Send stream a transport opens carries, in its
// header, the address the transport listens at (Config.Advertise). The
// receiving transport passes it to raft (raftcore.PeerAddrLearner) for each
// member the stream's frames were authorized for, so that a member that came
// back on a new address (a restarted node gives its pod a new IP) is reached
// as soon as it dials out, without waiting for whoever reports addresses
// (the pod watch in smr-cri serve, which follows the kubelet's status
// reports and can lag by tens of seconds).
//
// Trust: with TLS, an address is learned only for the (group, member) pairs
// AuthorizePeer accepted for the stream's frames, i.e. the certificate
// proves the sender is that member: only a member can move itself, and
// pointing its own traffic elsewhere harms nobody else (messages for it that
// reach another server are refused by that server's certificate check,
// authorizeOut). Without TLS nobody is authenticated: anyone who reaches the
// raft port can already send raft messages as any member, so the network is
// trusted as a whole; the one check is that the announced host is the
// stream's source address, so a stream cannot steer a member's traffic to an
// address its sender does not hold.

// advertiseKey is the stream header carrying the announced address.
const advertiseKey = "smr-raft-advertise"

// relearnEvery is how often one stream passes the same member's address on
// again: after a stale report overrode it (see raftcore/peeraddr.go), the
// member's live stream restores it within this time.
const relearnEvery = time.Second

// maxLearnKeys bounds the (group, member) pairs one stream remembers.
const maxLearnKeys = 256

// errBadAdvertise marks an announced or configured address that is not
// host:port.
var errBadAdvertise = errors.New("raft transport: bad advertised address")

// checkAdvertise accepts "host:port" with a port in 1..65535 and a host
// without spaces or control characters, at most 255 bytes in all.
func checkAdvertise(addr string) error {
	if len(addr) > 255 {
		return fmt.Errorf("%w: %d bytes", errBadAdvertise, len(addr))
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %q: %w", errBadAdvertise, addr, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%w: %q: port must be 1..65535", errBadAdvertise, addr)
	}
	if host == "" {
		return fmt.Errorf("%w: %q: no host", errBadAdvertise, addr)
	}
	for _, c := range host {
		if c <= ' ' || c == 0x7f {
			return fmt.Errorf("%w: %q: host has a space or control character", errBadAdvertise, addr)
		}
	}
	return nil
}

// defaultAdvertise is the listener's address when it names one IP (what
// peers dial); a wildcard listener (0.0.0.0, ::) announces nothing.
func defaultAdvertise(lis net.Listener) string {
	if lis == nil {
		return ""
	}
	ta, ok := lis.Addr().(*net.TCPAddr)
	if !ok || ta.IP == nil || ta.IP.IsUnspecified() {
		return ""
	}
	return ta.String()
}

// announce adds the advertised address to a stream's outgoing header.
func (t *GRPC) announce(ctx context.Context) context.Context {
	if t.advertise == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, advertiseKey, t.advertise)
}

// streamLearner passes the address announced on one inbound stream to raft.
type streamLearner struct {
	t    *GRPC
	addr string // "" = nothing to learn on this stream
	last map[learnKey]time.Time
	now  func() time.Time // time.Now; a test's clock
}

type learnKey struct {
	group  string
	member uint64
}

// newStreamLearner reads and checks the stream's announced address. A bad
// one is logged and ignored: the stream itself is served as before.
func (t *GRPC) newStreamLearner(ctx context.Context) *streamLearner {
	l := &streamLearner{t: t, now: time.Now}
	if t.learner == nil {
		return l
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(advertiseKey)
	if len(vals) == 0 {
		return l
	}
	remote := ""
	if pr, ok := grpcpeer.FromContext(ctx); ok && pr.Addr != nil {
		remote = pr.Addr.String()
	}
	addr := vals[0]
	if err := checkAdvertise(addr); err != nil {
		t.log.Warn("raft transport: ignoring the address a peer announced", "remote", remote, "err", err)
		return l
	}
	if t.cfg.TLS == nil && !sameHost(addr, remote) {
		t.log.Warn("raft transport: ignoring the address a peer announced: without TLS it must be the stream's source address",
			"remote", remote, "announced", addr)
		return l
	}
	l.addr = addr
	l.last = map[learnKey]time.Time{}
	return l
}

// sameHost reports whether addr's host is the IP of remote (host:port).
func sameHost(addr, remote string) bool {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	rh, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	a, b := net.ParseIP(h), net.ParseIP(rh)
	return a != nil && b != nil && a.Equal(b)
}

// learn passes the announced address on for every sender of f, which
// authorizeIn has accepted: once per (group, member) per relearnEvery.
func (l *streamLearner) learn(f *frame) {
	if l.addr == "" {
		return
	}
	var now time.Time
	for _, b := range f.batches {
		var lastFrom uint64
		for _, m := range b.msgs {
			from := m.GetFrom()
			if from == 0 || from == lastFrom {
				continue
			}
			lastFrom = from
			k := learnKey{b.group, from}
			if now.IsZero() {
				now = l.now()
			}
			at, seen := l.last[k]
			if seen && now.Sub(at) < relearnEvery {
				continue
			}
			if !seen && len(l.last) >= maxLearnKeys {
				continue
			}
			l.last[k] = now
			l.t.learner.LearnPeerAddr(b.group, from, l.addr)
		}
	}
}
