package fwdproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/rediscmd"
	"github.com/smr-io/smr-cri/test/lab/redislab"
	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// start runs a Proxy on a fresh loopback listener until the test ends and
// returns its address; errors of connections are collected in *errs.
func start(t *testing.T, cfg Config) (addr string, p *Proxy, errs func() []error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = ln
	if cfg.Protocol == "" {
		cfg.Protocol = framing.ProtoRESP
	}
	p, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []error
	done := make(chan error, 1)
	go func() {
		done <- p.Serve(ctx, func(err error) { mu.Lock(); got = append(got, err); mu.Unlock() })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), p, func() []error { mu.Lock(); defer mu.Unlock(); return append([]error(nil), got...) }
}

// exchange writes req on a fresh connection to addr and reads n lines.
func exchange(t *testing.T, addr, req string, n int) []string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	var lines []string
	for range n {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", lines, err)
		}
		lines = append(lines, l)
	}
	return lines
}

// TestForwardRedis forwards to a real redis-server: pipelined requests are
// answered in order, a refused request gets the framer's reply and the
// connection goes on, as through smr-cri.
func TestForwardRedis(t *testing.T) {
	app := redislab.Start(t)
	var d net.Dialer
	addr, p, errs := start(t, Config{DialApp: func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", app.Addr) },
		Framing: framing.Options{RedisAllow: rediscmd.AllowExpiry}})
	tests := []struct {
		name string
		req  string
		want []string
	}{
		{name: "pipelined SET and GET in one write", req: "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n",
			want: []string{"+OK\r\n", "$1\r\n", "v\r\n", "+PONG\r\n"}},
		{name: "unsupported command refused, connection goes on", req: "SUBSCRIBE ch\r\nGET k\r\n",
			want: []string{"-ERR smr-cri: ", "$1\r\n", "v\r\n"}},
		// Accepted only because it is rewritten (smr.io/redis-allow: expiry),
		// and the key lives: the absolute deadline is in the future.
		{name: "relative expiry rewritten at the origin", req: "SET e 1 EX 100\r\nEXISTS e\r\n",
			want: []string{"+OK\r\n", ":1\r\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := exchange(t, addr, tc.req, len(tc.want))
			for i, w := range tc.want {
				if !strings.HasPrefix(got[i], w) {
					t.Fatalf("reply %d = %q, want prefix %q (all: %q)", i, got[i], w, got)
				}
			}
		})
	}
	if s := p.Stats(); s.Conns != 3 || s.Requests != 6 || s.Refused != 1 || s.Redirected != 0 {
		t.Fatalf("Stats = %+v, want 3 connections, 6 requests answered, 1 refused, none redirected", s)
	}
	if e := errs(); len(e) != 0 {
		t.Fatalf("connection errors: %v", e)
	}
}

// fakeApp accepts connections and runs serve on each: the app's failures
// that a real Redis does not produce on demand.
func fakeApp(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return ln.Addr().String()
}

func TestForwardFailures(t *testing.T) {
	okApp := fakeApp(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			if _, err := io.WriteString(c, "+OK\r\n"); err != nil {
				return
			}
		}
	})
	// Answers half a bulk string, then hangs up.
	cutApp := fakeApp(t, func(c net.Conn) {
		_, _ = bufio.NewReader(c).ReadString('\n')
		_, _ = io.WriteString(c, "$10\r\nabc")
	})
	dial := func(addr string) func(context.Context) (net.Conn, error) {
		return func(ctx context.Context) (net.Conn, error) { var d net.Dialer; return d.DialContext(ctx, "tcp", addr) }
	}
	tests := []struct {
		name      string
		cfg       Config
		req       string
		wantReply string
		wantErr   string
		wantStats Stats
	}{
		{name: "app unreachable", cfg: Config{DialApp: func(context.Context) (net.Conn, error) { return nil, errors.New("no route") }},
			req: "PING\r\n", wantReply: "-ERR smr-cri: replication unavailable: no route", wantErr: "dial app: no route",
			wantStats: Stats{Conns: 1}},
		{name: "app hangs up mid-response", cfg: Config{DialApp: dial(cutApp)},
			req: "GET k\r\n", wantReply: "-ERR smr-cri: replication unavailable: app response", wantErr: "read app response to GET",
			wantStats: Stats{Conns: 1}},
		{name: "malformed request closes the connection", cfg: Config{DialApp: dial(okApp)},
			req: "*2\r\n$3\r\nGET\r\n$x\r\n", wantReply: "-ERR smr-cri: malformed", wantErr: "client request refused",
			wantStats: Stats{Conns: 1, Refused: 1}},
		{name: "original port unknown", cfg: Config{DialApp: dial(okApp), WantPort: 6380,
			OriginalPort: func(net.Conn) (int, error) { return 0, errors.New("not redirected") }},
			req: "PING\r\n", wantReply: "-ERR smr-cri: replication unavailable: original destination: not redirected",
			wantErr: "original port: not redirected", wantStats: Stats{Conns: 1}},
		{name: "redirected connection counted", cfg: Config{DialApp: dial(okApp), WantPort: 6380,
			OriginalPort: func(net.Conn) (int, error) { return 6380, nil }},
			req: "PING\r\n", wantReply: "+OK", wantStats: Stats{Conns: 1, Redirected: 1, Requests: 1}},
		{name: "other original port not counted", cfg: Config{DialApp: dial(okApp), WantPort: 6380,
			OriginalPort: func(net.Conn) (int, error) { return 6379, nil }},
			req: "PING\r\n", wantReply: "+OK", wantStats: Stats{Conns: 1, Requests: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, p, errs := start(t, tc.cfg)
			if got := exchange(t, addr, tc.req, 1)[0]; !strings.HasPrefix(got, tc.wantReply) {
				t.Fatalf("reply = %q, want prefix %q", got, tc.wantReply)
			}
			if tc.wantErr != "" {
				// The connection's error is logged once its goroutine ends.
				deadline := time.Now().Add(10 * time.Second)
				for len(errs()) == 0 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				e := errs()
				if len(e) != 1 || !strings.Contains(e[0].Error(), tc.wantErr) {
					t.Fatalf("connection errors = %v, want one containing %q", e, tc.wantErr)
				}
			}
			if s := p.Stats(); s != tc.wantStats {
				t.Fatalf("Stats = %+v, want %+v", s, tc.wantStats)
			}
		})
	}
}

func TestNew(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dial := func(context.Context) (net.Conn, error) { return nil, errors.New("unused") }
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "resp", cfg: Config{Listener: ln, DialApp: dial, Protocol: framing.ProtoRESP}},
		{name: "http", cfg: Config{Listener: ln, DialApp: dial, Protocol: framing.ProtoHTTP}},
		{name: "no listener", cfg: Config{DialApp: dial, Protocol: framing.ProtoRESP}, wantErr: "Listener and DialApp are required"},
		{name: "no dialer", cfg: Config{Listener: ln, Protocol: framing.ProtoRESP}, wantErr: "Listener and DialApp are required"},
		{name: "unknown protocol", cfg: Config{Listener: ln, DialApp: dial, Protocol: "smtp"}, wantErr: `unknown protocol "smtp"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if testcheck.ErrorCase(t, "New", err, tc.wantErr) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
