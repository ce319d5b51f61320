package replication

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/replication/framing"
)

// An idle app connection is checked for a close by the app before it is
// used again (Redis' idle timeout, an HTTP server's keep-alive timeout or
// Connection: close): the check must see a close that already happened,
// and must not take a live idle connection for closed.
func TestIdleAppConnCloseDetected(t *testing.T) {
	tests := []struct {
		name       string
		peer       func(net.Conn) // what the app did to its end
		wantClosed bool
	}{
		{"live and idle", func(net.Conn) {}, false},
		{"closed by the app", func(c net.Conn) { _ = c.Close() }, true},
		{"half-closed by the app", func(c net.Conn) { _ = c.(*net.TCPConn).CloseWrite() }, true},
		{"unsolicited bytes", func(c net.Conn) { _, _ = c.Write([]byte("+OK\r\n")) }, true},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dial := func() (net.Conn, net.Conn) {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				app, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = c.Close(); _ = app.Close() })
				tt.peer(app)
				time.Sleep(50 * time.Millisecond) // the close reached this end
				return c, app
			}
			c, _ := dial()
			ac := newAppConn(c, framing.NewRESP(framing.Options{}), 6379, true)
			if got := closedWhileIdle(ac.r, ac.conn); got != tt.wantClosed {
				t.Errorf("closedWhileIdle(shared connection) = %v, want %v", got, tt.wantClosed)
			}
			c, _ = dial()
			p := &readPipe{conn: c, r: bufio.NewReader(c), idle: time.Now().Add(-2 * sharedIdleCheck)}
			if got := p.usable(); got == tt.wantClosed {
				t.Errorf("readPipe.usable() = %v, want %v", got, !tt.wantClosed)
			}
		})
	}
}
