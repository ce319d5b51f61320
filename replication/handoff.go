package replication

import (
	"errors"
	"net"
	"sync"
	"time"
)

// handoffListener keeps a member's client listener open across rebuilds.
// A rebuild stops the member's replication (Pod) and starts the next one;
// were the listener closed and opened again in between, the kernel would
// reset the connections waiting in its backlog and refuse new ones (the
// clients see a reset or EOF, not why). Instead, each run of the member
// accepts through a view of this listener, and a connection that arrives
// while no run accepts is answered by refuse (the member's reason: a
// protocol error such as "replica rebuilding: ...; try another replica").
type handoffListener struct {
	ln     net.Listener
	refuse func(net.Conn) // runs on its own goroutine; closes the connection
	mu     sync.Mutex
	cur    *listenerView // the running pod's view; nil between runs
	done   chan struct{} // closed when the accept loop ended
	wg     sync.WaitGroup
}

func newHandoffListener(ln net.Listener, refuse func(net.Conn)) *handoffListener {
	h := &handoffListener{ln: ln, refuse: refuse, done: make(chan struct{})}
	go h.acceptLoop()
	return h
}

// acceptLoop accepts until the listener closes, handing each connection to
// the current view or refusing it. Transient accept failures (out of file
// descriptors with many clients at once) are waited out, as net/http
// does, rather than ending the replicated port for good.
func (h *handoffListener) acceptLoop() {
	defer close(h.done)
	backoff := time.Duration(0)
	for {
		conn, err := h.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		h.mu.Lock()
		v := h.cur
		h.mu.Unlock()
		if v == nil || !v.deliver(conn) {
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				h.refuse(conn)
			}()
		}
	}
}

// view returns a listener for the next run; it replaces the current view.
func (h *handoffListener) view() net.Listener {
	v := &listenerView{h: h, conns: make(chan net.Conn), closed: make(chan struct{})}
	h.mu.Lock()
	old := h.cur
	h.cur = v
	h.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return v
}

// Close closes the listener for good and waits for the refusals under way.
func (h *handoffListener) Close() error {
	err := h.ln.Close()
	<-h.done
	h.wg.Wait()
	return err
}

// listenerView is one run's net.Listener: Accept takes the connections the
// handoff listener accepted; Close detaches the run (the listener itself
// stays open for the next).
type listenerView struct {
	h      *handoffListener
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (v *listenerView) Accept() (net.Conn, error) {
	select {
	case c := <-v.conns:
		return c, nil
	case <-v.closed:
	case <-v.h.done:
	}
	return nil, net.ErrClosed
}

func (v *listenerView) Close() error {
	v.once.Do(func() {
		close(v.closed)
		v.h.mu.Lock()
		if v.h.cur == v {
			v.h.cur = nil
		}
		v.h.mu.Unlock()
	})
	return nil
}

func (v *listenerView) Addr() net.Addr { return v.h.ln.Addr() }

// deliver hands conn to the run; false if the view closed first.
func (v *listenerView) deliver(conn net.Conn) bool {
	select {
	case v.conns <- conn:
		return true
	case <-v.closed:
		return false
	}
}
