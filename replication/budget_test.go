package replication

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestClientBudgetAccounting(t *testing.T) {
	if _, err := NewClientBudget(connBufferBytes - 1); err == nil {
		t.Error("a budget below one connection's buffers: want an error")
	}
	b, err := NewClientBudget(100 << 10)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		take, give int64
		ok         bool
		used       int64
	}{
		{take: 64 << 10, ok: true, used: 64 << 10},
		{take: 40 << 10, ok: false, used: 64 << 10}, // over the limit: nothing charged
		{take: 36 << 10, ok: true, used: 100 << 10}, // exactly the limit
		{give: 64 << 10, used: 36 << 10},
		{take: 64 << 10, ok: true, used: 100 << 10},
	}
	for i, s := range steps {
		if s.take > 0 {
			if ok := b.take(s.take); ok != s.ok {
				t.Errorf("step %d: take(%d) = %v, want %v", i, s.take, ok, s.ok)
			}
		} else {
			b.give(s.give)
		}
		if u := b.Used(); u != s.used {
			t.Errorf("step %d: used %d, want %d", i, u, s.used)
		}
	}
	var none *ClientBudget // no budget: everything passes, nothing counted
	if !none.take(1<<40) || none.Used() != 0 {
		t.Error("a nil budget must charge nothing")
	}
}

// The node-wide budget refuses, with an error the client can read, a new
// connection once the open ones hold it, and a request that grows past
// what is left; connections that close or complete give their share back,
// and the replicas serve normally afterwards.
func TestClientBudgetRefusesAndRecovers(t *testing.T) {
	const extra = 40 << 10 // less than one more connection
	budget, err := NewClientBudget(3*connBufferBytes + extra)
	if err != nil {
		t.Fatal(err)
	}
	_, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs, budget: budget})
	addr := c.replicas[0].addr
	want := func(what string, n int64) {
		t.Helper()
		waitFor(t, what, func() bool { return budget.Used() == n })
	}

	var idle []net.Conn
	for range 3 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		idle = append(idle, conn)
	}
	want("three idle connections charged", 3*connBufferBytes)
	if got := exchangeFor(t, addr, "", 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 503") || !strings.Contains(got, "client memory budget") {
		t.Errorf("fourth connection: %q, want a 503 naming the client memory budget", got)
	}

	idle[0].Close()
	want("a closed connection gives its buffers back", 2*connBufferBytes)
	// 200 KiB of a body announced as 300 KiB (under max-request-bytes): it
	// grows past the 40 KiB left once its own connection is charged.
	big := "PUT /kv/big HTTP/1.1\r\nHost: a\r\nContent-Length: 307200\r\n\r\n" + strings.Repeat("x", 200<<10)
	if got := exchangeFor(t, addr, big, 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 503") || !strings.Contains(got, "client memory budget") {
		t.Errorf("growing request: %.200q, want a 503 naming the client memory budget", got)
	}
	if n := counterValue(t, c.metrics.badRequests.WithLabelValues(testGroup, "client_budget")); n != 2 {
		t.Errorf(`smr_bad_requests_total{reason="client_budget"} = %v, want 2`, n)
	}
	for _, conn := range idle[1:] {
		conn.Close()
	}
	want("every connection closed", 0)

	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for i, r := range c.replicas {
		if code, body := do(t, client, "POST", "http://"+r.addr+"/incr/n", ""); code != 200 || body != string(rune('1'+i)) {
			t.Fatalf("incr via replica %d after the refusals: %d %q", i+1, code, body)
		}
	}
}
