package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// AuthorizeFunc decides whether the peer holding cert may speak for member
// `member` of `group`: on the server side for the sender (From) of every
// inbound raft message, on the client side for the addressee of every batch
// before it is written. A nil error allows it.
type AuthorizeFunc func(cert *x509.Certificate, group string, member uint64) error

// ErrPeerRefused marks streams and batches refused by AuthorizePeer.
var ErrPeerRefused = errors.New("raft transport: peer refused")

func (cfg *Config) validateTLS() error {
	if cfg.TLS != nil && cfg.AuthorizePeer == nil {
		return errors.New("transport: TLS needs AuthorizePeer (which group members a certificate may speak for)")
	}
	if cfg.TLS == nil && cfg.AuthorizePeer != nil {
		return errors.New("transport: AuthorizePeer needs TLS (peer certificates)")
	}
	return nil
}

// serverCreds is TLS (with handshake refusals logged) or plaintext.
func (t *GRPC) serverCreds() grpc.ServerOption {
	if t.cfg.TLS == nil {
		return grpc.Creds(insecure.NewCredentials())
	}
	return grpc.Creds(loggedCreds{credentials.NewTLS(t.cfg.TLS), t.log})
}

// clientCreds returns the credentials for dialing p: the server's
// certificate is remembered per connection so that pump can authorize
// every batch against it.
func (p *peer) clientCreds() credentials.TransportCredentials {
	if p.t.cfg.TLS == nil {
		return insecure.NewCredentials()
	}
	cfg := p.t.cfg.TLS.Clone()
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if verify != nil {
			if err := verify(cs); err != nil {
				return err
			}
		}
		if len(cs.PeerCertificates) == 0 {
			return errors.New("raft transport: peer presented no certificate")
		}
		p.serverCert.Store(cs.PeerCertificates[0])
		return nil
	}
	return loggedCreds{credentials.NewTLS(cfg), p.t.log.With("addr", p.addr)}
}

// authorizeOut filters batches the dialed server may not receive (its
// certificate does not prove membership of the batch's group as member
// `to`): they are dropped and reported like any lost message.
func (p *peer) authorizeOut(bs []batch) []batch {
	if p.t.cfg.TLS == nil {
		return bs
	}
	cert := p.serverCert.Load()
	kept := bs[:0]
	for _, b := range bs {
		if err := p.t.cfg.AuthorizePeer(cert, b.group, b.to); err != nil {
			if msg := err.Error(); msg != p.lastRefusal {
				p.lastRefusal = msg
				p.t.log.Warn("raft transport: not sending to peer", "addr", p.addr, "group", b.group, "to", b.to, "err", err)
			}
			p.t.dropped(b)
			continue
		}
		kept = append(kept, b)
	}
	return kept
}

// authorizeIn checks every message of a received frame before any of it
// reaches raft: the stream's certificate must prove that the sender is
// member m.From of the batch's group.
func (t *GRPC) authorizeIn(ctx context.Context, f *frame) error {
	if t.cfg.TLS == nil {
		return nil
	}
	var cert *x509.Certificate
	pr, _ := grpcpeer.FromContext(ctx)
	if pr != nil {
		if ti, ok := pr.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			cert = ti.State.PeerCertificates[0]
		}
	}
	// A frame usually holds many messages of one sender: check each
	// distinct (group, sender) of the frame once.
	var lastGroup string
	var lastFrom uint64
	checked := false
	for _, b := range f.batches {
		for _, m := range b.msgs {
			if checked && b.group == lastGroup && m.GetFrom() == lastFrom {
				continue
			}
			lastGroup, lastFrom, checked = b.group, m.GetFrom(), true
			if err := t.cfg.AuthorizePeer(cert, b.group, m.GetFrom()); err != nil {
				remote := ""
				if pr != nil {
					remote = pr.Addr.String()
				}
				t.log.Warn("raft transport: refused peer stream", "remote", remote, "group", b.group, "from", m.GetFrom(), "err", err)
				return status.Error(codes.PermissionDenied, fmt.Errorf("%w: %w", ErrPeerRefused, err).Error())
			}
		}
	}
	return nil
}

// loggedCreds logs refused TLS handshakes (no, expired, foreign or
// non-member certificate; replayed or garbled bytes) with their reason:
// gRPC itself drops them silently.
type loggedCreds struct {
	credentials.TransportCredentials
	log *slog.Logger
}

func (c loggedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, ai, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		c.log.Warn("raft transport: refused peer connection", "remote", conn.RemoteAddr().String(), "err", err)
	}
	return out, ai, err
}

func (c loggedCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, ai, err := c.TransportCredentials.ClientHandshake(ctx, authority, conn)
	if err != nil && ctx.Err() == nil {
		c.log.Warn("raft transport: peer refused or failed TLS handshake", "remote", conn.RemoteAddr().String(), "err", err)
	}
	return out, ai, err
}

func (c loggedCreds) Clone() credentials.TransportCredentials {
	return loggedCreds{c.TransportCredentials.Clone(), c.log}
}
