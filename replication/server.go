package replication

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// ServerConfig configures the client side of one replicated port.
type ServerConfig struct {
	Group   string
	Self    uint64 // this replica's member ID (the origin of its proposals)
	Port    Port
	Framing framing.Options
	Orderer Orderer
	Exec    *Executor
	// RequestTimeout bounds one Propose/ReadIndex attempt (default 10s).
	RequestTimeout time.Duration
	// Retries of a proposal whose outcome is unknown or that found no
	// leader, with the same (session, seq) so it applies at most once (default 5).
	Retries int
	Log     *slog.Logger
	Metrics *Metrics
	// ReservedPath is the app's snapshot endpoint (smr.io/snapshot-path),
	// refused to clients of an HTTP port (see reservedTarget).
	ReservedPath string
	// Budget is the node's client memory budget (nil: none); ServeConn
	// charges it a connection's buffers and the requests being received.
	Budget *ClientBudget
	// NotServing says why this replica does not serve now (nil: it
	// serves): the reason an open connection is told, as a protocol error
	// before it closes, when the serving context ends (the pod stops for a
	// rebuild or a detach; errRestarting if serving) or a read finds the
	// app not ready. nil: no reason known.
	NotServing func() error
}

// Server takes client connections for one replicated port: it frames each
// connection's requests, orders them through the group and writes back the
// local app's responses. A client connection is a replicated session: OPEN
// and CLOSE are log entries, so every replica opens and closes its own app
// connection at the same log position.
type Server struct {
	cfg ServerConfig
	m   *groupMetrics
	wg  sync.WaitGroup
}

// NewServer validates cfg.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Orderer == nil || cfg.Exec == nil || cfg.Self == 0 || cfg.Self >= 1<<16 {
		return nil, errors.New("replication: server needs Orderer, Exec and Self in 1..65535")
	}
	if _, err := framing.New(cfg.Port.Protocol, cfg.Framing); err != nil {
		return nil, fmt.Errorf("replication: %w", err)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, m: cfg.Metrics.forGroup(cfg.Group)}, nil
}

// ResetOrigin proposes RESET for this replica: every replica closes the app
// sessions this replica opened in a previous run (their clients are gone).
// Call it once after the group starts and before serving clients.
func ResetOrigin(ctx context.Context, o Orderer) error {
	// EndOriginSessions also drops raftcore's de-duplication state of
	// those sessions on every replica.
	if _, err := o.Propose(ctx, raftcore.Proposal{Data: Op{Kind: KindReset}.Encode(), EndOriginSessions: true}); err != nil {
		return fmt.Errorf("propose RESET: %w", err)
	}
	return nil
}

// Serve accepts connections until ctx ends or ln fails, serving each in its
// own goroutine. It closes ln and waits for the connections to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	defer s.wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept on port %d: %w", s.cfg.Port.Number, err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.ServeConn(ctx, conn); err != nil {
				s.cfg.Log.Info("client connection ended", "group", s.cfg.Group, "remote", conn.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// Session IDs: the origin in the top 16 bits, then a per-process random base
// plus a counter, so IDs are unique in the group without coordination.
var (
	sessionBase = func() uint64 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		return binary.LittleEndian.Uint64(b[:])
	}()
	sessionCtr atomic.Uint64
)

func newSessionID(origin uint64) uint64 {
	return origin<<48 | (sessionBase+sessionCtr.Add(1))&(1<<48-1)
}

// ServeConn serves one client connection and closes it. Requests of one
// connection are handled in order, one at a time, like the app would.
//
// A panic anywhere in the handler ends only this connection: it is
// recovered, logged with its stack, counted (smr_connection_panics_total)
// and answered with a protocol error; the session's CLOSE is still ordered
// (deferred in serveConn), so every replica ends the session too.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) (err error) {
	defer conn.Close()
	defer func() {
		if p := recover(); p != nil {
			err = panicked(s.cfg.Log, s.m, s.cfg.Group, panicPathClient, p)
			if f, ferr := framing.New(s.cfg.Port.Protocol, s.cfg.Framing); ferr == nil {
				reply, _ := f.ErrorReply(err)
				_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = conn.Write(reply)
			}
		}
	}()
	return s.serveConn(ctx, conn)
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn) error {
	// When serving ends, a read waiting for the client's next request ends
	// at once and a write within a second; the handler then tells the
	// client why (stopped) instead of closing under it.
	stop := context.AfterFunc(ctx, func() {
		_ = conn.SetReadDeadline(time.Now())
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	})
	defer stop()
	if !s.cfg.Budget.take(connBufferBytes) {
		s.m.badRequest("client_budget")
		refuse(conn, s, fmt.Errorf("%w: %w; retry later", framing.ErrUnavailable, ErrClientBudget))
		return fmt.Errorf("connection refused: %w", ErrClientBudget)
	}
	defer s.cfg.Budget.give(connBufferBytes)

	in := &chargedReader{r: conn, b: s.cfg.Budget}
	defer in.settle()
	br := bufio.NewReaderSize(in, clientBufferSize)
	bw := bufio.NewWriterSize(conn, clientBufferSize)
	opts := s.cfg.Framing
	opts.OnExpectContinue = func() {
		// Answer for the app so the client sends the body we must order;
		// the app's own 100 Continue later is one more interim response.
		_, _ = bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		_ = bw.Flush()
	}
	f, _ := framing.New(s.cfg.Port.Protocol, opts)
	session, seq := newSessionID(s.cfg.Self), uint64(1)

	res, err := s.propose(ctx, session, seq, Op{Kind: KindOpen, Port: s.cfg.Port.Number, Protocol: s.cfg.Port.Protocol})
	if err != nil || len(res.Value) > 0 {
		// The app here could not take the session: answer with the reason.
		if err != nil && ctx.Err() != nil {
			s.closeSession(session, seq+1)
			return s.stopped(conn, bw, f, "")
		}
		if err == nil {
			_, _ = conn.Write(res.Value)
			err = errors.New("app refused the session")
		} else {
			reply, _ := f.ErrorReply(fmt.Errorf("%w: %v", framing.ErrUnavailable, err))
			_, _ = conn.Write(reply)
		}
		s.closeSession(session, seq+1)
		return fmt.Errorf("open session: %w", err)
	}
	defer func() { s.closeSession(session, seq+1) }()

	for {
		req, err := f.NextRequest(br)
		in.settle()
		if err != nil {
			if ctx.Err() != nil {
				return s.stopped(conn, bw, f, "")
			}
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if errors.Is(err, ErrClientBudget) {
				s.m.badRequest("client_budget")
				reply, _ := f.ErrorReply(fmt.Errorf("%w: %v; retry later", framing.ErrUnavailable, err))
				replyAndClose(conn, reply)
				return fmt.Errorf("client request refused: %w", err)
			}
			if !framing.IsRequestError(err) {
				return fmt.Errorf("read client: %w", err)
			}
			s.m.badRequest(reason(err))
			reply, closeConn := f.ErrorReply(err)
			if _, werr := bw.Write(reply); werr != nil || bw.Flush() != nil || closeConn {
				return fmt.Errorf("client request refused: %w", err)
			}
			continue
		}
		if s.cfg.Port.Protocol == framing.ProtoHTTP && reservedTarget(req.Op, s.cfg.ReservedPath) {
			s.m.badRequest("reserved_path")
			reply, _ := f.ErrorReply(fmt.Errorf("%w: %s is smr-cri's snapshot endpoint, not reachable through the replicated port",
				framing.ErrUnsupported, s.cfg.ReservedPath))
			_, _ = bw.Write(reply)
			_ = bw.Flush()
			return fmt.Errorf("client request to the reserved snapshot path refused: %s", req.Op)
		}
		var val []byte
		if req.ReadOnly {
			val, err = s.read(ctx, session, req)
		} else {
			raw := req.Raw
			if req.Rewrite {
				// Stamped with this replica's clock at propose time (relative
				// expiries, stream IDs): every replica applies the same bytes.
				raw, err = rediscmd.Rewrite(req.Raw, time.Now().UnixMilli())
				if err != nil {
					err = fmt.Errorf("%w: rewrite %s: %v", framing.ErrMalformed, req.Op, err)
					s.m.badRequest(reason(err))
					reply, _ := f.ErrorReply(err)
					_, _ = bw.Write(reply)
					_ = bw.Flush()
					return err
				}
			}
			seq++
			res, err = s.propose(ctx, session, seq, Op{Kind: KindRequest, Name: req.Op, Raw: raw})
			val = res.Value
			if err == nil && authAccepted(req, val) {
				// Every replica learns the AUTH succeeded (sessions.go).
				seq++
				_, err = s.propose(ctx, session, seq, Op{Kind: KindAuthOK})
			}
		}
		if err != nil && req.ReadOnly && errors.Is(err, ErrNotReady) {
			// The app here is fenced (a repair began): the client is told the
			// replica's reason, like a new client, and the connection ends.
			reply, _ := f.ErrorReply(s.notServing(fmt.Errorf("%w; try another replica", err)))
			_, _ = bw.Write(reply)
			if bw.Flush() == nil {
				_ = conn.SetDeadline(time.Now().Add(time.Second))
				drainAfterReply(conn)
			}
			return fmt.Errorf("%s: %w", req.Op, err)
		}
		if err != nil && ctx.Err() != nil {
			inFlight := req.Op
			if req.ReadOnly {
				inFlight = "" // a read changes nothing
			}
			return s.stopped(conn, bw, f, inFlight)
		}
		if err != nil {
			// The outcome is unknown after retries: tell the client and end
			// the connection, as a server that lost its state would.
			kind := framing.ErrUnavailable
			if errors.Is(err, raftcore.ErrTooLarge) {
				kind = framing.ErrTooLarge // above the ordering node's proposal limit
				s.m.badRequest(reason(kind))
			}
			reply, _ := f.ErrorReply(fmt.Errorf("%w: %v", kind, err))
			_, _ = bw.Write(reply)
			_ = bw.Flush()
			return fmt.Errorf("%s: %w", req.Op, err)
		}
		if _, err := bw.Write(val); err != nil {
			return fmt.Errorf("write client: %w", err)
		}
		if end, ok := s.cfg.Exec.SessionEnded(session); ok {
			// Its reply said so; the app connection is gone on every replica.
			_ = bw.Flush()
			return fmt.Errorf("%w at log index %d: %s", ErrSessionEnded, end.Index, end.Reason)
		}
		if s.cfg.Port.Protocol == framing.ProtoHTTP && framing.EndsHTTPConnection(req.Raw) {
			// RFC 9112 9.6: the server closes after answering "Connection:
			// close" (or HTTP/1.0 without keep-alive), as the app closed its
			// connection; requests pipelined after it are not served.
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("write client: %w", err)
			}
			return nil
		}
		// Flush once the pipelined requests already received are answered.
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("write client: %w", err)
			}
		}
	}
}

// stopped answers a client whose replica stops serving it (the pod stops:
// a rebuild or a detach) with the reason as a protocol error, after the
// replies already due, then half-closes and drains the connection (a bare
// close would show the client an EOF or a reset, not why). inFlight names
// a request whose outcome is unknown (it may be ordered all the same).
func (s *Server) stopped(conn net.Conn, bw *bufio.Writer, f framing.Framer, inFlight string) error {
	why := s.notServing(errRestarting)
	if inFlight != "" {
		why = fmt.Errorf("%w (the outcome of the %s in flight is unknown)", why, inFlight)
	}
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	reply, _ := f.ErrorReply(why)
	_, _ = bw.Write(reply)
	if bw.Flush() == nil {
		drainAfterReply(conn)
	}
	return fmt.Errorf("replica stopped serving this client: %w", why)
}

// notServing is the replica's reason for not serving, or fallback.
func (s *Server) notServing(fallback error) error {
	if s.cfg.NotServing != nil {
		if why := s.cfg.NotServing(); why != nil {
			return why
		}
	}
	return fallback
}

func reason(err error) string {
	switch {
	case errors.Is(err, framing.ErrTooLarge):
		return "too_large"
	case errors.Is(err, framing.ErrUnsupported):
		return "unsupported"
	}
	return "malformed"
}

// closeSession proposes CLOSE with a fresh context (the client's is gone).
func (s *Server) closeSession(session, seq uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
	defer cancel()
	if _, err := s.propose(ctx, session, seq, Op{Kind: KindClose}); err != nil {
		s.cfg.Log.Warn("close session", "group", s.cfg.Group, "session", fmt.Sprintf("%x", session), "err", err)
	}
}

// propose orders op, retrying with the same (session, seq) while the outcome
// is unknown or no leader is known; raftcore applies a (session, seq) at
// most once and returns the first result to a retry.
func (s *Server) propose(ctx context.Context, session, seq uint64, op Op) (raftcore.Result, error) {
	data := op.Encode()
	s.m.proposal(op.Kind)
	backoff := 20 * time.Millisecond
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		s.cfg.Exec.markStart(session, seq, time.Now())
		// CLOSE ends the session: raftcore drops its de-duplication state
		// when the entry is applied, so the table does not grow with every
		// client connection ever served.
		res, err := s.cfg.Orderer.Propose(actx, raftcore.Proposal{Session: session, Seq: seq, Data: data, EndSession: op.Kind == KindClose})
		cancel()
		// Apply consumed the start time unless the entry was a de-duplicated
		// retry or failed; drop it either way.
		s.cfg.Exec.takeStart(session, seq)
		if err == nil {
			return res, nil
		}
		if !retryable(err) || attempt >= s.cfg.Retries || ctx.Err() != nil {
			s.m.proposalError()
			return res, fmt.Errorf("propose %s (session %x seq %d, %d attempts): %w", op.Kind, session, seq, attempt+1, err)
		}
		if err := sleep(ctx, backoff); err != nil {
			return res, err
		}
		backoff = min(2*backoff, time.Second)
	}
}

// read serves a read-only request locally after a ReadIndex barrier.
func (s *Server) read(ctx context.Context, session uint64, req framing.Request) ([]byte, error) {
	backoff := 20 * time.Millisecond
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		idx, err := s.cfg.Orderer.ReadIndex(actx)
		if err == nil {
			var val []byte
			val, err = s.cfg.Exec.Read(actx, session, req, idx)
			cancel()
			if err == nil {
				return val, nil
			}
			if errors.Is(err, ErrNotReady) {
				return nil, err
			}
		} else {
			cancel()
		}
		if !retryable(err) || attempt >= s.cfg.Retries || ctx.Err() != nil {
			s.m.proposalError()
			return nil, fmt.Errorf("read %s (%d attempts): %w", req.Op, attempt+1, err)
		}
		if err := sleep(ctx, backoff); err != nil {
			return nil, err
		}
		backoff = min(2*backoff, time.Second)
	}
}

func retryable(err error) bool {
	return errors.Is(err, raftcore.ErrNoLeader) || errors.Is(err, raftcore.ErrLeaderLost) ||
		errors.Is(err, raftcore.ErrTimeout) || errors.Is(err, raftcore.ErrGroupFull) ||
		errors.Is(err, context.DeadlineExceeded)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
