package redisbench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"time"
)

// setRequest is the one request SetLoop repeats (RESP, key:1 = xxx).
var setRequest = []byte("*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$3\r\nxxx\r\n")

// SetLoop sends n SETs over one new connection to the Redis server at addr,
// depth at a time, and returns the rate in requests/s. Depth 1 is the
// executor's rule before an ordered pipeline: each request after the
// previous reply. Depth d writes d requests in one write and then reads their
// d replies, as redis-benchmark -P d does per client. Every reply must be
// +OK; ctx's deadline, if any, bounds the whole loop.
func SetLoop(ctx context.Context, addr string, n, depth int) (float64, error) {
	if n < 1 || depth < 1 {
		return 0, fmt.Errorf("redisbench: SET loop of %d requests at depth %d: both must be positive", n, depth)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("redisbench: dial %s: %w", addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	r := bufio.NewReader(c)
	batch := bytes.Repeat(setRequest, depth)
	start := time.Now()
	for sent := 0; sent < n; {
		k := min(depth, n-sent)
		if _, err := c.Write(batch[:k*len(setRequest)]); err != nil {
			return 0, fmt.Errorf("redisbench: write %s after %d SETs: %w", addr, sent, err)
		}
		for i := range k {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return 0, fmt.Errorf("redisbench: read %s after %d replies: %w", addr, sent+i, err)
			}
			if string(line) != "+OK\r\n" {
				return 0, fmt.Errorf("redisbench: %s answered SET with %q, want +OK", addr, line)
			}
		}
		sent += k
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
