package replication

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// ClientBudget bounds the memory smr-cri spends on client connections,
// across every replicated pod of the node together: each accepted
// connection is charged its buffers (connBufferBytes), and the bytes of the
// request it is receiving stay charged until that request is complete.
//
// Per-connection limits (smr.io/max-request-bytes) do not bound the node:
// a thousand slow clients each stopping just short of the limit would pin
// about a gigabyte in serve, and an out-of-memory kill of serve takes the
// CRI path of every pod on the node with it (docs/hostile-input.md). With
// the budget spent, new connections and growing requests are refused with
// a clear error instead; connections whose requests complete are not
// affected. A nil *ClientBudget charges nothing.
type ClientBudget struct {
	mu    sync.Mutex
	used  int64
	limit int64
}

// DefaultClientBudgetBytes is serve's default node-wide budget: 4,096 idle
// connections, or 256 requests of 1 MiB in progress at once.
const DefaultClientBudgetBytes = 256 << 20

// connBufferBytes is what one client connection holds while open: the
// reader and writer buffers of serveConn.
const connBufferBytes = 2 * clientBufferSize

// clientBufferSize is the size of each of a client connection's buffers.
const clientBufferSize = 32 << 10

// ErrClientBudget: the node's client memory budget is spent (its message
// names the flag that sets it, for whoever reads the refusal).
var ErrClientBudget = errors.New("the node's client memory budget is spent (serve --client-memory-mib)")

// NewClientBudget returns a budget of limit bytes (at least one connection's
// buffers).
func NewClientBudget(limit int64) (*ClientBudget, error) {
	if limit < connBufferBytes {
		return nil, fmt.Errorf("replication: client memory budget %d bytes is below one connection's buffers (%d)", limit, connBufferBytes)
	}
	return &ClientBudget{limit: limit}, nil
}

func (b *ClientBudget) take(n int64) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

func (b *ClientBudget) give(n int64) {
	if b == nil || n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

// Used returns the bytes charged now.
func (b *ClientBudget) Used() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// chargedReader charges every byte read from a client to the budget until
// settle says the request being read is complete.
type chargedReader struct {
	r    io.Reader
	b    *ClientBudget
	held int64
}

func (c *chargedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		if !c.b.take(int64(n)) {
			return 0, fmt.Errorf("%w: %d bytes of an incomplete request held on this connection", ErrClientBudget, c.held)
		}
		c.held += int64(n)
	}
	return n, err
}

// settle releases the bytes of the request just completed (its bytes have
// left the read path; the buffers stay charged to the connection).
func (c *chargedReader) settle() {
	c.b.give(c.held)
	c.held = 0
}
