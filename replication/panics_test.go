package replication

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smr-io/smr-cri/raftcore"
)

// panicOrderer panics in the client handler's goroutine when a request
// carries the marker, standing in for any bug on the client path.
type panicOrderer struct{ Orderer }

func (o panicOrderer) Propose(ctx context.Context, p raftcore.Proposal) (raftcore.Result, error) {
	if op, _ := DecodeOp(p.Data); op.Kind == KindRequest && bytes.Contains(op.Raw, []byte("/panic")) {
		panic("injected panic on the client path")
	}
	return o.Orderer.Propose(ctx, p)
}

// panicDialer returns app connections whose Read panics after a request
// carrying the marker was written: a panic while reading the app's response.
type panicDialer struct{ AppDialer }

type panicConn struct {
	net.Conn
	mu    sync.Mutex
	armed bool
}

func (d panicDialer) DialApp(ctx context.Context, port int) (net.Conn, error) {
	c, err := d.AppDialer.DialApp(ctx, port)
	if err != nil {
		return nil, err
	}
	return &panicConn{Conn: c}, nil
}

func (c *panicConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.armed = bytes.Contains(b, []byte("/app-panic"))
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *panicConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	armed := c.armed
	c.mu.Unlock()
	if armed {
		panic("injected panic reading the app response")
	}
	return c.Conn.Read(b)
}

// A panic on a client connection's path or on the app response path ends
// only that connection (with an error reply), is counted per path, and the
// group keeps serving other clients.
func TestPanicEndsOnlyThatConnection(t *testing.T) {
	stores, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs,
		wrap: func(o Orderer) Orderer { return panicOrderer{o} },
		exec: func(cfg *ExecutorConfig) {
			if cfg.Self == 1 {
				cfg.Dialer = panicDialer{cfg.Dialer}
			}
		}})
	good := &http.Client{Transport: &http.Transport{}}
	defer good.CloseIdleConnections()
	tests := []struct {
		name, path, metricPath string
		want                   string
	}{
		{"client handler", "/panic", panicPathClient, "HTTP/1.1 503 Service Unavailable\r\n"},
		{"app response", "/app-panic", panicPathAppResponse, "HTTP/1.1 503 Service Unavailable\r\n"},
	}
	for i, tt := range tests {
		got := exchangeFor(t, c.replicas[0].addr, "PUT /kv"+tt.path+" HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx", 3*time.Second)
		if !strings.HasPrefix(got, tt.want) || !strings.Contains(got, "recovered panic") {
			t.Errorf("%s: reply %q, want %q naming the recovered panic", tt.name, got, tt.want)
		}
		if n := counterValue(t, c.metrics.connPanics.WithLabelValues(testGroup, tt.metricPath)); n != 1 {
			t.Errorf("%s: smr_connection_panics_total{path=%q} = %v, want 1", tt.name, tt.metricPath, n)
		}
		// Every replica still serves.
		for j, r := range c.replicas {
			if code, body := do(t, good, "POST", "http://"+r.addr+"/incr/n", ""); code != 200 || body != string(rune('1'+3*i+j)) {
				t.Fatalf("%s: incr via replica %d after the panic: %d %q", tt.name, j+1, code, body)
			}
		}
	}
	good.CloseIdleConnections()
	c.waitIdle() // the panicked sessions were closed on every replica too
	for i, s := range stores {
		if got := direct(t, s, "/kv/n"); got != "200 6" {
			t.Errorf("replica %d app: %q, want 200 6", i+1, got)
		}
	}
}

// exchangeFor sends send and returns what arrives until the peer closes or
// d passes (a session that failed on one replica keeps its client
// connection open, so the reply is not followed by EOF).
func exchangeFor(t *testing.T, addr, send string, d time.Duration) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(send)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(d))
	b, _ := io.ReadAll(conn)
	return string(b)
}

// A panic while applying an ordered entry (any bug between the log and the
// app; injected here in the hook that runs just before the bytes go out)
// must not crash the node: the client gets an error naming the recovered
// panic, the panic is counted on path "apply", the replica's app state is
// reported uncertain (the repair path rebuilds it) and later entries apply.
func TestApplyPanicGoesToRepair(t *testing.T) {
	_, addrs := kvApps(t, 1)
	metrics, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	x, err := NewExecutor(ExecutorConfig{Group: testGroup, Self: 1, Ports: []Port{httpPort},
		Dialer: &addrDialer{addr: addrs[0]}, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	causes := make(chan Cause, 4)
	x.OnUncertain(func(c Cause) { causes <- c })
	x.OnRequestSending(func(e raftcore.Entry) {
		if e.Index == 2 {
			panic("injected panic applying an entry")
		}
	})
	put := func(path string) []byte {
		return Op{Kind: KindRequest, Port: httpPort.Number, Protocol: httpPort.Protocol,
			Raw: []byte("PUT /kv/" + path + " HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")}.Encode()
	}
	entries := []struct {
		data []byte
		want string
	}{
		{Op{Kind: KindOpen, Port: httpPort.Number, Protocol: httpPort.Protocol}.Encode(), ""},
		{put("a"), "recovered panic"},
		{put("b"), "HTTP/1.1 204"},
	}
	for i, en := range entries {
		val, err := x.Apply(raftcore.Entry{Group: testGroup, Index: uint64(i + 1), Session: 7, Seq: uint64(i + 1), Origin: 1, Data: en.data})
		if err != nil || !strings.Contains(string(val), en.want) {
			t.Errorf("entry %d: %q, %v; want a reply containing %q", i+1, val, err, en.want)
		}
	}
	select {
	case c := <-causes:
		if c.Kind != CauseApplyPanic || !strings.Contains(c.Detail, "index 2") {
			t.Errorf("uncertain cause = %+v, want %s at index 2", c, CauseApplyPanic)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the panic did not send the replica to the repair path")
	}
	if n := counterValue(t, metrics.connPanics.WithLabelValues(testGroup, panicPathApply)); n != 1 {
		t.Errorf("smr_connection_panics_total{path=apply} = %v, want 1", n)
	}
}
