// Package fwdproxy is the forwarding proxy of `make bench`'s proxy ceiling
// (bench-proxy-ceiling): smr-cri's client-side path with the ordering
// replaced by a direct forward to the app, so the share of the proxy alone
// (an extra TCP hop each way, framing, process wake-ups) is visible beside
// the replicated group's numbers.
//
// What it shares with smr-cri's own path (replication.Server and the
// executor): the redirected connection arrives on a listener the caller
// opened inside the pod's netns behind netintercept's iptables REDIRECT,
// with SO_ORIGINAL_DST read per connection as serve does; requests are framed
// with the same replication/framing framer and options, stamped by
// rediscmd.Rewrite where smr-cri would rewrite them, and client buffers,
// one request at a time per connection and the flush rule (flush once the
// client's pipelined requests already received are answered) are those of
// replication.Server; the app is reached from inside the pod's netns
// (e.g. replication.NetnsDialer), each request written as framed and its
// response read with the framer's ReadResponse through a 16 KiB reader as
// the executor does.
//
// What it leaves out, by design: raft (proposal, WAL, commit, ReadIndex),
// the executor's single ordered stream (each client connection here has its
// own app connection, nothing waits for another), sessions, de-duplication,
// traces, metrics and the client memory budget. It runs in the benchmark's
// process, not in serve's.
package fwdproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// Buffer sizes of replication.Server (clientBufferSize) and of the
// executor's app reader.
const (
	clientBufferSize = 32 << 10
	appReaderSize    = 16 << 10
)

// Config is one forwarded port.
type Config struct {
	// Listener receives the (redirected) client connections.
	Listener net.Listener
	// DialApp connects to the app, e.g. inside the pod's netns.
	DialApp func(ctx context.Context) (net.Conn, error)
	// Protocol is framing.ProtoRESP or framing.ProtoHTTP.
	Protocol string
	Framing  framing.Options
	// OriginalPort, if set, is called on each accepted connection (serve
	// reads SO_ORIGINAL_DST the same way, replication.OriginalPort); a
	// connection whose port it cannot tell is refused. Stats counts the
	// connections it saw redirected to WantPort.
	OriginalPort func(net.Conn) (int, error)
	WantPort     int
}

// Stats counts what a Proxy forwarded.
type Stats struct {
	Conns      int64 // client connections served
	Redirected int64 // of those, sent to WantPort (by OriginalPort)
	Requests   int64 // requests answered by the app
	Refused    int64 // requests refused by the framer (answered with its error reply)
}

// Proxy forwards every client connection to its own app connection.
type Proxy struct {
	cfg                                 Config
	conns, redirected, requests, refuse atomic.Int64
	wg                                  sync.WaitGroup
}

// New validates cfg.
func New(cfg Config) (*Proxy, error) {
	if cfg.Listener == nil || cfg.DialApp == nil {
		return nil, errors.New("fwdproxy: Listener and DialApp are required")
	}
	if _, err := framing.New(cfg.Protocol, cfg.Framing); err != nil {
		return nil, fmt.Errorf("fwdproxy: %w", err)
	}
	return &Proxy{cfg: cfg}, nil
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	return Stats{Conns: p.conns.Load(), Redirected: p.redirected.Load(), Requests: p.requests.Load(), Refused: p.refuse.Load()}
}

// Serve accepts connections until ctx ends or the listener fails, then
// closes the listener and waits for the connections it started. errLog, if
// set, gets the reason each connection ended abnormally.
func (p *Proxy) Serve(ctx context.Context, errLog func(error)) error {
	ln := p.cfg.Listener
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	defer p.wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fwdproxy: accept: %w", err)
		}
		p.wg.Go(func() {
			if err := p.serveConn(ctx, conn); err != nil && errLog != nil {
				errLog(fmt.Errorf("fwdproxy: connection from %s: %w", conn.RemoteAddr(), err))
			}
		})
	}
}

func (p *Proxy) serveConn(ctx context.Context, conn net.Conn) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	p.conns.Add(1)
	// Validated by New. Two framers, as in smr-cri: the client side's
	// (replication.Server) and the app side's (the executor's session).
	f, _ := framing.New(p.cfg.Protocol, p.cfg.Framing)
	af, _ := framing.New(p.cfg.Protocol, p.cfg.Framing)
	if p.cfg.OriginalPort != nil {
		port, err := p.cfg.OriginalPort(conn)
		if err != nil {
			reply, _ := f.ErrorReply(fmt.Errorf("%w: original destination: %v", framing.ErrUnavailable, err))
			_, _ = conn.Write(reply)
			return fmt.Errorf("original port: %w", err)
		}
		if port == p.cfg.WantPort {
			p.redirected.Add(1)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	app, err := p.cfg.DialApp(dctx)
	cancel()
	if err != nil {
		reply, _ := f.ErrorReply(fmt.Errorf("%w: %v", framing.ErrUnavailable, err))
		_, _ = conn.Write(reply)
		return fmt.Errorf("dial app: %w", err)
	}
	defer app.Close()
	stopApp := context.AfterFunc(ctx, func() { _ = app.Close() })
	defer stopApp()
	br := bufio.NewReaderSize(conn, clientBufferSize)
	bw := bufio.NewWriterSize(conn, clientBufferSize)
	ar := bufio.NewReaderSize(app, appReaderSize)
	for {
		req, err := f.NextRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !framing.IsRequestError(err) {
				return fmt.Errorf("read client: %w", err)
			}
			// As replication.Server: the framer's error reply, and the
			// connection goes on unless the framer says it cannot.
			p.refuse.Add(1)
			reply, closeConn := f.ErrorReply(err)
			if _, werr := bw.Write(reply); werr != nil || bw.Flush() != nil || closeConn {
				return fmt.Errorf("client request refused: %w", err)
			}
			continue
		}
		raw := req.Raw
		if req.Rewrite {
			if raw, err = rediscmd.Rewrite(req.Raw, time.Now().UnixMilli()); err != nil {
				reply, _ := f.ErrorReply(fmt.Errorf("%w: rewrite %s: %v", framing.ErrMalformed, req.Op, err))
				_, _ = bw.Write(reply)
				_ = bw.Flush()
				return fmt.Errorf("rewrite %s: %w", req.Op, err)
			}
		}
		if _, err := app.Write(raw); err != nil {
			return fmt.Errorf("write app: %w", err)
		}
		resp, err := af.ReadResponse(ar, req)
		if err != nil {
			// The app's answer is lost: end the client's connection, as
			// a server that lost its state would.
			reply, _ := f.ErrorReply(fmt.Errorf("%w: app response: %v", framing.ErrUnavailable, err))
			_, _ = bw.Write(reply)
			_ = bw.Flush()
			return fmt.Errorf("read app response to %s: %w", req.Op, err)
		}
		p.requests.Add(1)
		if _, err := bw.Write(resp); err != nil {
			return fmt.Errorf("write client: %w", err)
		}
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("write client: %w", err)
			}
		}
	}
}
