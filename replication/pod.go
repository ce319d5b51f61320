package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
)

// PodConfig wires the replication of one pod on this host. The host side
// (the node daemon) supplies the pieces that touch the kernel and raft:
// a listener in the pod's netns that receives the redirected client
// connections, a dialer to the app in that netns, and a function that starts
// the pod's raft group with the executor as its state machine.
type PodConfig struct {
	Spec Spec
	// Listener receives every redirected client connection of the pod.
	Listener net.Listener
	// OriginalPort returns the app port a redirected connection was meant
	// for (netintercept.OriginalDst). It may be nil when Spec has one port.
	OriginalPort func(net.Conn) (int, error)
	// Dialer reaches the app inside the pod (127.0.0.1:port in its netns).
	Dialer AppDialer
	// StartGroup starts (or reopens, replaying its log) the raft group
	// Spec.GroupKey() with sm as its StateMachine. Close stops it.
	StartGroup func(sm raftcore.StateMachine) (Orderer, func() error, error)
	Trace      *Tracer
	Log        *slog.Logger
	Metrics    *Metrics
	// Executor tunes the executor (timeouts, queue bound); Group, Self,
	// Ports, Framing, Dialer, Trace, Log and Metrics are filled from above.
	Executor ExecutorConfig
	// Budget is the node's client memory budget, shared by every pod
	// (nil: none).
	Budget *ClientBudget
	// Readiness is the member's verdict (readiness.go): a new client of a
	// replica that does not serve is refused with its reason. Nil: the
	// executor's own state decides.
	Readiness func() Readiness
}

// Pod is the running replication of one pod.
type Pod struct {
	cfg       PodConfig
	exec      *Executor
	orderer   Orderer
	stopGroup func() error
	servers   map[int]*Server
	cancel    context.CancelFunc
	done      chan struct{}
	stopped   sync.Once
	err       error
}

// StartPod starts the executor and the raft group, then serves clients in
// the background: first it orders a RESET for this replica (ending sessions
// of its previous run), so no new session can be ordered before it.
func StartPod(ctx context.Context, cfg PodConfig) (*Pod, error) {
	if cfg.Listener == nil || cfg.Dialer == nil || cfg.StartGroup == nil {
		return nil, errors.New("replication: StartPod needs Listener, Dialer and StartGroup")
	}
	if len(cfg.Spec.Ports) != 1 && cfg.OriginalPort == nil {
		return nil, errors.New("replication: a pod with several ports needs OriginalPort")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ec := cfg.Executor
	ec.Group, ec.Self, ec.Ports, ec.Framing = cfg.Spec.GroupKey(), cfg.Spec.MemberID, cfg.Spec.Ports, cfg.Spec.FramingOptions()
	ec.HTTPPipelining = cfg.Spec.HTTPPipelining
	ec.Dialer, ec.Trace, ec.Log, ec.Metrics = cfg.Dialer, cfg.Trace, cfg.Log, cfg.Metrics
	exec, err := NewExecutor(ec)
	if err != nil {
		return nil, err
	}
	orderer, stop, err := cfg.StartGroup(exec)
	if err != nil {
		_ = exec.Close()
		return nil, fmt.Errorf("start raft group %s: %w", ec.Group, err)
	}
	exec.reportTo(orderer)
	p := &Pod{cfg: cfg, exec: exec, orderer: orderer, stopGroup: stop, servers: map[int]*Server{}, done: make(chan struct{})}
	for _, port := range cfg.Spec.Ports {
		srv, err := NewServer(ServerConfig{Group: ec.Group, Self: ec.Self, Port: port, Framing: ec.Framing,
			Orderer: orderer, Exec: exec, Log: cfg.Log, Metrics: cfg.Metrics, ReservedPath: cfg.Spec.SnapshotPath,
			Budget: cfg.Budget, NotServing: p.notServing})
		if err != nil {
			_ = stop()
			_ = exec.Close()
			return nil, err
		}
		p.servers[port.Number] = srv
	}
	runCtx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go p.run(runCtx, orderer)
	return p, nil
}

// Executor returns the pod's executor (health, applied index).
func (p *Pod) Executor() *Executor { return p.exec }

func (p *Pod) run(ctx context.Context, orderer Orderer) {
	defer close(p.done)
	// The listener closes on every way out, including a Stop while RESET
	// still waits for a leader. Under a Manager it is this run's view of
	// the member's listener (handoff.go): closing it detaches this run, and
	// the next run of a rebuild accepts on the same socket.
	defer p.cfg.Listener.Close()
	stop := context.AfterFunc(ctx, func() { _ = p.cfg.Listener.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	// RESET must be ordered before any session of this run: clients
	// accepted meanwhile wait for it (as they would in the backlog), unless
	// the replica does not serve, which they are told at once.
	reset := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := ResetOrigin(rctx, orderer)
			cancel()
			if err == nil {
				break
			}
			p.cfg.Log.Warn("order RESET (will retry)", "group", p.cfg.Spec.GroupKey(), "err", err)
			if sleep(ctx, backoff) != nil {
				return
			}
		}
		close(reset)
		p.auditLoop(ctx, orderer)
	}()
	var held atomic.Int32 // clients waiting for RESET
	backoff := time.Duration(0)
	for {
		conn, err := p.cfg.Listener.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !errors.Is(err, net.ErrClosed) {
				// Out of file descriptors (many clients at once) and other
				// transient failures: wait and accept again, as net/http
				// does, rather than ending the replicated port for good.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.cfg.Log.Warn("accept failed (will retry)", "group", p.cfg.Spec.GroupKey(), "err", err, "retry_in", backoff)
				if sleep(ctx, backoff) != nil {
					return
				}
				continue
			}
			p.err = fmt.Errorf("accept: %w", err)
			p.cfg.Log.Error("replication listener failed", "group", p.cfg.Spec.GroupKey(), "err", err)
			return
		}
		backoff = 0
		srv, err := p.serverFor(conn)
		if err != nil {
			p.cfg.Log.Warn("dropping connection", "group", p.cfg.Spec.GroupKey(), "remote", conn.RemoteAddr().String(), "err", err)
			_ = conn.Close()
			continue
		}
		// A refusal drains what the client sent (up to a second): never
		// in the accept loop.
		refuseLater := func(why error) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				refuse(conn, srv, why)
			}()
		}
		if why := p.notServing(); why != nil {
			refuseLater(why)
			continue
		}
		// Before RESET, clients wait in goroutines instead of the kernel's
		// backlog: bounded like the backlog.
		waiting := false
		select {
		case <-reset:
		default:
			if held.Add(1) > maxHeldClients {
				held.Add(-1)
				refuseLater(fmt.Errorf("%w: replica starting (%d clients wait for it already); try another replica", ErrNotReady, maxHeldClients))
				continue
			}
			waiting = true
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			why := p.awaitReset(ctx, reset)
			if waiting {
				held.Add(-1)
			}
			if why != nil {
				refuse(conn, srv, why)
				return
			}
			if err := srv.ServeConn(ctx, conn); err != nil {
				p.cfg.Log.Debug("client connection ended", "group", p.cfg.Spec.GroupKey(), "err", err)
			}
		}()
	}
}

// maxHeldClients bounds the clients waiting for a starting replica's RESET
// (the kernel's default listen backlog, which held them before).
var maxHeldClients int32 = 4096

// notServing is why a new client is refused now (nil: it is served).
func (p *Pod) notServing() error {
	if p.cfg.Readiness != nil {
		if r := p.cfg.Readiness(); !r.Serving {
			return r.errNotServing()
		}
		return nil
	}
	if st, _ := p.exec.stateNow(); st != StateServing {
		return fmt.Errorf("%w: replica %s; try another replica", ErrNotReady, st)
	}
	return nil
}

// awaitReset holds a new client until this run's RESET is ordered; it
// returns why the client is refused when the replica stops serving (or
// stops) meanwhile.
func (p *Pod) awaitReset(ctx context.Context, reset <-chan struct{}) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-reset:
			return p.notServing()
		case <-ctx.Done():
			return fmt.Errorf("%w: replica stopping; try another replica", ErrNotReady)
		case <-t.C:
			if why := p.notServing(); why != nil {
				return why
			}
		}
	}
}

// auditLoop proposes the group's ordered audits while this member leads
// (audit.go): every AuditConfig.Every client entries, and at least every
// Interval while there were writes. Whoever leads continues the count,
// since every member follows it from the log.
func (p *Pod) auditLoop(ctx context.Context, orderer Orderer) {
	cfg := p.exec.audit.cfg
	st, ok := orderer.(interface{ Status() raftcore.Status })
	if cfg.Off || !ok {
		return
	}
	t := time.NewTicker(min(cfg.Interval, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := st.Status()
		if s.Leader != s.ID || !p.exec.audit.due(time.Now()) {
			continue
		}
		voters := make([]uint64, 0, len(s.Members))
		for id := range s.Members {
			voters = append(voters, id)
		}
		slices.Sort(voters)
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := ProposeAudit(actx, orderer, cfg.Window, voters); err != nil && ctx.Err() == nil {
			p.cfg.Log.Warn("audit: propose", "group", p.cfg.Spec.GroupKey(), "err", err)
		}
		cancel()
	}
}

// CaughtUp waits until this replica's app applied everything the group
// committed when it was called (a ReadIndex, then the executor's applied
// index): the end of a repair's replay.
func (p *Pod) CaughtUp(ctx context.Context) error {
	idx, err := readIndexSettled(ctx, p.orderer, 200*time.Millisecond)
	if err != nil {
		return err
	}
	return p.exec.WaitApplied(ctx, idx)
}

// readIndexSettled is o.ReadIndex, retried every pause while the group is
// between leaders (until ctx ends): a member rebuilt by a repair restarts its
// raft and, busy replaying the log, may miss heartbeats and briefly lose
// sight of the leader (e2e slow-replica saw a repair reported failed for
// that while the member went on to serve).
func readIndexSettled(ctx context.Context, o Orderer, pause time.Duration) (uint64, error) {
	for {
		idx, err := o.ReadIndex(ctx)
		if err == nil || !(errors.Is(err, raftcore.ErrLeaderLost) || errors.Is(err, raftcore.ErrNoLeader)) {
			return idx, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("read index: %w (last: %w)", ctx.Err(), err)
		case <-time.After(pause):
		}
	}
}

// refuse answers a new client with a protocol error saying why it is not
// served (a replica rebuilding or broken, the client budget spent), instead
// of holding it in the backlog or serving it from an app in an unknown state.
func refuse(conn net.Conn, srv *Server, why error) {
	refuseWith(conn, srv.cfg.Port.Protocol, srv.cfg.Framing, why)
}

// refuseWith is refuse for a port's protocol and framing options.
func refuseWith(conn net.Conn, protocol string, opts framing.Options, why error) {
	defer conn.Close()
	f, err := framing.New(protocol, opts)
	if err != nil {
		return
	}
	reply, _ := f.ErrorReply(why)
	replyAndClose(conn, reply)
}

// replyAndClose writes a last reply, then half-closes and drains what the
// client already sent (bounded, for a second): closing with unread bytes
// resets the connection, and the client may lose the reply. The caller
// closes conn.
func replyAndClose(conn net.Conn, reply []byte) {
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write(reply); err != nil {
		return
	}
	drainAfterReply(conn)
}

// drainAfterReply half-closes conn after its last reply and drains what
// the client sent (bounded by conn's deadline); the caller closes conn.
func drainAfterReply(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(conn, 64<<10))
}

func (p *Pod) serverFor(conn net.Conn) (*Server, error) {
	if p.cfg.OriginalPort == nil {
		return p.servers[p.cfg.Spec.Ports[0].Number], nil
	}
	port, err := p.cfg.OriginalPort(conn)
	if err != nil {
		return nil, fmt.Errorf("original destination: %w", err)
	}
	srv, ok := p.servers[port]
	if !ok {
		return nil, fmt.Errorf("port %d is not replicated (smr.io/ports)", port)
	}
	return srv, nil
}

// Stop ends the client connections (their sessions are closed through the
// log while the group still runs), then stops the group and the executor.
func (p *Pod) Stop() error {
	p.stopped.Do(func() {
		p.cancel()
		<-p.done
		errs := []error{p.err}
		// Waits for the app inside the apply loop (a snapshot restore or
		// a repair at start) end first: stopping the group waits for
		// that loop.
		p.exec.stopWaiting()
		if p.stopGroup != nil {
			errs = append(errs, p.stopGroup())
		}
		errs = append(errs, p.exec.Close())
		p.err = errors.Join(errs...)
	})
	return p.err
}
