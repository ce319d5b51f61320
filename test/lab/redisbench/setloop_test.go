package redisbench

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// batchServer is a fake Redis for SetLoop's own logic: it accepts one
// connection and answers only once a whole batch of min(depth, left) SETs
// has arrived, so a loop that waits for replies before sending its whole
// batch deadlocks (and fails on the test's deadline). After answering
// closeAfter SETs (if > 0) it closes the connection. It returns how many
// SETs it received.
func batchServer(t *testing.T, n, depth, closeAfter int, reply string) (addr string, got <-chan int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan int, 1)
	go func() {
		received := 0
		defer func() { ch <- received }()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for received < n {
			k := min(depth, n-received)
			buf := make([]byte, k*len(setRequest))
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if !bytes.Equal(buf, bytes.Repeat(setRequest, k)) {
				t.Errorf("server got %q, want %d SETs", buf, k)
				return
			}
			for range k {
				if closeAfter > 0 && received == closeAfter {
					return
				}
				received++
				if _, err := io.WriteString(c, reply); err != nil {
					return
				}
			}
		}
	}()
	return ln.Addr().String(), ch
}

func TestSetLoop(t *testing.T) {
	tests := []struct {
		name       string
		n, depth   int
		closeAfter int
		reply      string
		wantErr    string
	}{
		{name: "serial", n: 5, depth: 1, reply: "+OK\r\n"},
		{name: "depth 32, last batch short", n: 100, depth: 32, reply: "+OK\r\n"},
		{name: "depth above n", n: 3, depth: 32, reply: "+OK\r\n"},
		{name: "error reply", n: 4, depth: 2, reply: "-ERR no\r\n", wantErr: `answered SET with "-ERR no\r\n", want +OK`},
		{name: "server closes mid-batch", n: 10, depth: 4, closeAfter: 6, reply: "+OK\r\n", wantErr: "after 6 replies"},
		{name: "no requests", n: 0, depth: 1, wantErr: "both must be positive"},
		{name: "depth zero", n: 1, depth: 0, wantErr: "both must be positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, got := batchServer(t, tc.n, max(tc.depth, 1), tc.closeAfter, tc.reply)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rate, err := SetLoop(ctx, addr, tc.n, tc.depth)
			if testcheck.ErrorCase(t, "SetLoop", err, tc.wantErr) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rate <= 0 {
				t.Fatalf("SetLoop rate = %v, want > 0", rate)
			}
			if n := <-got; n != tc.n {
				t.Fatalf("server received %d SETs, want %d", n, tc.n)
			}
		})
	}
}

func TestSetLoopRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := SetLoop(context.Background(), addr, 1, 1); err == nil {
		t.Fatal("SetLoop against a closed port succeeded")
	}
}
