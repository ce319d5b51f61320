package replication

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/smr-io/smr-cri/replication/framing"
)

// readPipes serve the local reads of sessions that have no app connection of
// their own (pipeline.go): per port, one app connection on which concurrent
// reads are pipelined. Requests are written in arrival order (those that
// arrive while a write is under way go out together in the next one), and
// one reader goroutine matches the responses in the same order. Reads
// change no state, so they need no order among themselves or with the
// log's writes beyond the applied watermark each one waited for.
type readPipes struct {
	x     *Executor
	mu    sync.Mutex
	pipes map[shareKey]*readPipe
	done  bool
}

func newReadPipes(x *Executor) *readPipes {
	return &readPipes{x: x, pipes: map[shareKey]*readPipe{}}
}

// readPipe is one pipelined read connection.
type readPipe struct {
	conn    net.Conn
	r       *bufio.Reader
	framer  framing.Framer
	timeout time.Duration

	mu      sync.Mutex
	cond    *sync.Cond  // signals waiting grew or err was set
	waiting []*readCall // written or about to be, in order
	unsent  net.Buffers // requests not written yet
	writing bool        // a caller is writing unsent
	err     error       // the connection failed; every call fails
	idle    time.Time   // when waiting last became empty
}

type readCall struct {
	req  framing.Request
	done chan readResult
}

type readResult struct {
	val []byte
	err error
}

// do runs one read on the pipe of port and the session's connection state.
// A pipe the app closed while idle, or that failed on something other than
// a timeout, is replaced once.
func (rp *readPipes) do(ctx context.Context, port int, proto string, share *shareState, req framing.Request) ([]byte, error) {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var p *readPipe
		if p, err = rp.pipe(ctx, port, proto, share); err != nil {
			return nil, err
		}
		var val []byte
		val, err = p.do(ctx, req)
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
			return val, err
		}
	}
	return nil, err
}

// pipe returns the pipe of port and state, dialing a new one (brought to
// that state) when there is none or it failed.
func (rp *readPipes) pipe(ctx context.Context, port int, proto string, share *shareState) (*readPipe, error) {
	k := shareKey{port, share.key}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.done {
		return nil, ErrNotReady
	}
	if p := rp.pipes[k]; p != nil && p.usable() {
		return p, nil
	} else if p != nil {
		p.fail(errors.New("replaced"))
	}
	dctx, cancel := context.WithTimeout(ctx, rp.x.cfg.DialTimeout)
	conn, err := rp.x.cfg.Dialer.DialApp(dctx, port)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w: dial the app for a local read: %v", ErrNotReady, err)
	}
	c, err := rp.x.connInState(conn, proto, port, true, share.reqs)
	if err != nil {
		return nil, fmt.Errorf("%w: bring a connection to the session's state for a local read: %v", framing.ErrUnavailable, err)
	}
	p := &readPipe{conn: conn, r: c.r, framer: c.framer, timeout: rp.x.cfg.AppTimeout, idle: time.Now()}
	p.cond = sync.NewCond(&p.mu)
	rp.pipes[k] = p
	go p.readLoop()
	return p, nil
}

// close fails and closes every pipe; later reads get ErrNotReady.
func (rp *readPipes) close() {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.done = true
	for k, p := range rp.pipes {
		p.fail(errors.New("executor closed"))
		delete(rp.pipes, k)
	}
}

// drop closes the pipe of one connection state (no session has it any more).
func (rp *readPipes) drop(k shareKey) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if p := rp.pipes[k]; p != nil {
		p.fail(errors.New("no session has this connection state any more"))
		delete(rp.pipes, k)
	}
}

// reset closes every pipe (the app under them was restored); the next read
// dials a new one.
func (rp *readPipes) reset() {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	for k, p := range rp.pipes {
		p.fail(errors.New("the app was restored"))
		delete(rp.pipes, k)
	}
}

// usable: not failed, and not closed by the app while idle (Redis' idle
// timeout); checked only while no read is outstanding, when the reader
// goroutine is not reading.
func (p *readPipe) usable() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return false
	}
	if len(p.waiting) > 0 || time.Since(p.idle) < sharedIdleCheck {
		return true
	}
	return !closedWhileIdle(p.r, p.conn)
}

// do writes req (batched with the requests of concurrent callers) and waits
// for its response.
func (p *readPipe) do(ctx context.Context, req framing.Request) ([]byte, error) {
	call := &readCall{req: req, done: make(chan readResult, 1)}
	p.mu.Lock()
	if p.err != nil {
		err := p.err
		p.mu.Unlock()
		return nil, err
	}
	p.waiting = append(p.waiting, call)
	p.unsent = append(p.unsent, req.Raw)
	p.cond.Signal()
	if !p.writing {
		p.writing = true
		for len(p.unsent) > 0 && p.err == nil {
			bufs := p.unsent
			p.unsent = nil
			p.mu.Unlock()
			_ = p.conn.SetWriteDeadline(time.Now().Add(p.timeout))
			_, err := bufs.WriteTo(p.conn)
			p.mu.Lock()
			if err != nil {
				p.failLocked(fmt.Errorf("write local read to the app: %w", err))
			}
		}
		p.writing = false
	}
	p.mu.Unlock()
	select {
	case r := <-call.done:
		return r.val, r.err
	case <-ctx.Done():
		// The reader still reads (and drops) its response: the stream
		// stays matched.
		return nil, ctx.Err()
	}
}

// readLoop matches responses to calls in order until the pipe fails.
func (p *readPipe) readLoop() {
	for {
		p.mu.Lock()
		for len(p.waiting) == 0 && p.err == nil {
			p.cond.Wait()
		}
		if p.err != nil {
			p.mu.Unlock()
			return
		}
		call := p.waiting[0]
		p.mu.Unlock()
		_ = p.conn.SetReadDeadline(time.Now().Add(p.timeout))
		resp, err := p.read(call.req)
		if err != nil {
			p.fail(err)
			return
		}
		p.mu.Lock()
		if p.err != nil { // failed meanwhile (a write): every call got the error
			p.mu.Unlock()
			return
		}
		p.waiting = p.waiting[1:]
		if len(p.waiting) == 0 {
			p.idle = time.Now()
		}
		p.mu.Unlock()
		call.done <- readResult{val: resp}
	}
}

func (p *readPipe) read(req framing.Request) (resp []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: reading the app's response: %v", ErrPanic, r)
		}
	}()
	resp, err = p.framer.ReadResponse(p.r, req)
	if err != nil {
		return nil, fmt.Errorf("read app response to local read %s: %w", req.Op, err)
	}
	return resp, nil
}

func (p *readPipe) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failLocked(err)
}

// failLocked closes the connection and fails every waiting call.
func (p *readPipe) failLocked(err error) {
	if p.err != nil {
		return
	}
	p.err = fmt.Errorf("%w: %w", framing.ErrUnavailable, err)
	_ = p.conn.Close()
	for _, c := range p.waiting {
		c.done <- readResult{err: p.err}
	}
	p.waiting, p.unsent = nil, nil
	p.cond.Broadcast()
}
