package replication

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/smr-io/smr-cri/examples/kvstore"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/test/lab/freeport"
)

// kvApps starts n independent kvstore apps (the unmodified application).
func kvApps(t *testing.T, n int) ([]*kvstore.Store, []string) {
	var stores []*kvstore.Store
	var addrs []string
	for range n {
		s := kvstore.New()
		srv := httptest.NewServer(s)
		t.Cleanup(srv.Close)
		stores = append(stores, s)
		addrs = append(addrs, strings.TrimPrefix(srv.URL, "http://"))
	}
	return stores, addrs
}

// direct asks one app directly, bypassing replication.
func direct(t *testing.T, s *kvstore.Store, path string) string {
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return fmt.Sprintf("%d %s", rec.Code, rec.Body.String())
}

func do(t *testing.T, client *http.Client, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var httpPort = Port{Number: 8080, Protocol: framing.ProtoHTTP}

// Concurrent increments through every replica end equal on every app, and
// every increment got a distinct result (one linear order).
func TestHTTPConcurrentIncrEqualOnEveryReplica(t *testing.T) {
	stores, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs})
	const clientsPerReplica, incrs = 2, 15
	var (
		mu   sync.Mutex
		seen []int
		wg   sync.WaitGroup
	)
	for _, r := range c.replicas {
		for range clientsPerReplica {
			wg.Add(1)
			go func() {
				defer wg.Done()
				client := &http.Client{Transport: &http.Transport{}} // keep-alive: one session
				defer client.CloseIdleConnections()
				for range incrs {
					code, body := do(t, client, "POST", "http://"+r.addr+"/incr/k", "")
					n, err := strconv.Atoi(body)
					if code != 200 || err != nil {
						t.Errorf("incr via %d = %d %q", r.id, code, body)
						return
					}
					mu.Lock()
					seen = append(seen, n)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	c.waitIdle()
	total := 3 * clientsPerReplica * incrs
	slices.Sort(seen)
	for i, n := range seen {
		if n != i+1 {
			t.Fatalf("increment results are not 1..%d: %v", total, seen)
		}
	}
	for i, s := range stores {
		if got, want := direct(t, s, "/kv/k"), fmt.Sprintf("200 %d", total); got != want {
			t.Errorf("replica %d app: %q, want %q", i+1, got, want)
		}
	}
	// One trace line per committed request, with the fields the issue asks for.
	for _, field := range []string{"smr=commit", "group=" + testGroup, "index=", "term=", "session=", `op="POST /incr/k"`, "origin=", "latency="} {
		if !strings.Contains(c.replicas[0].traceText(), field) {
			t.Errorf("trace lacks %q:\n%.500s", field, c.replicas[0].traceText())
		}
	}
	if n := strings.Count(c.replicas[2].traceText(), `op="POST /incr/k"`); n != total {
		t.Errorf("replica 3 traced %d increments, want %d", n, total)
	}
	mfs, err := c.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	for _, want := range []string{"smr_proposals_total", "smr_commits_total", "smr_apply_lag_seconds", "smr_applied_index"} {
		if !slices.Contains(names, want) {
			t.Errorf("metric %s not registered; have %v", want, names)
		}
	}
}

// With smr.io/http-get-readonly, a GET through another replica is served
// locally after a ReadIndex and still sees the acknowledged write.
func TestHTTPReadOnlyGetIsLinearizable(t *testing.T) {
	_, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs, framing: framing.Options{HTTPGetReadOnly: true}})
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for i := range 5 {
		w, rd := c.replicas[i%3], c.replicas[(i+1)%3]
		val := fmt.Sprintf("v%d", i)
		if code, _ := do(t, client, "PUT", "http://"+w.addr+"/kv/a", val); code != 204 {
			t.Fatalf("PUT via %d: %d", w.id, code)
		}
		if code, body := do(t, client, "GET", "http://"+rd.addr+"/kv/a", ""); code != 200 || body != val {
			t.Fatalf("GET via %d after PUT via %d = %d %q, want %q", rd.id, w.id, code, body, val)
		}
	}
	// The GETs took the read path: traced as reads, never committed.
	for _, r := range c.replicas {
		for line := range strings.SplitSeq(r.traceText(), "\n") {
			if strings.Contains(line, "smr=commit") && strings.Contains(line, `op="GET /kv/a"`) {
				t.Errorf("replica %d committed a GET: %s", r.id, line)
			}
		}
	}
	if n := strings.Count(c.replicas[1].traceText()+c.replicas[2].traceText()+c.replicas[0].traceText(), "smr=read"); n != 5 {
		t.Errorf("%d local reads traced, want 5", n)
	}
}

// rawConn sends raw bytes to a replica and returns everything it answers
// until it closes the connection.
func rawExchange(t *testing.T, addr, send string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(send)); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(conn)
	return string(b)
}

// Bad input gets a protocol error on that connection only; the group and a
// concurrent client are unaffected.
func TestHTTPBadRequestsCloseOnlyThatConnection(t *testing.T) {
	stores, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs})
	good := &http.Client{Transport: &http.Transport{}}
	defer good.CloseIdleConnections()
	if code, body := do(t, good, "POST", "http://"+c.replicas[0].addr+"/incr/n", ""); code != 200 || body != "1" {
		t.Fatalf("first incr: %d %q", code, body)
	}
	tests := []struct {
		name, send, status string
	}{
		{"malformed", "GET / HTTP/1.1\r\nNoColon\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"},
		{"oversized", "PUT /kv/a HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", "HTTP/1.1 413 Content Too Large\r\n"},
		{"upgrade", "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", "HTTP/1.1 501 Not Implemented\r\n"},
		{"valid then malformed", "POST /incr/n HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\nBAD\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 1\r\n\r\n2HTTP/1.1 400 Bad Request\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rawExchange(t, c.replicas[1].addr, tt.send)
			if !strings.HasPrefix(got, tt.status) || !strings.Contains(got, "Connection: close") {
				t.Fatalf("reply %q, want prefix %q and Connection: close", got, tt.status)
			}
		})
	}
	// The long-lived client's session still works.
	if code, body := do(t, good, "POST", "http://"+c.replicas[0].addr+"/incr/n", ""); code != 200 || body != "3" {
		t.Fatalf("incr after bad clients: %d %q", code, body)
	}
	good.CloseIdleConnections()
	c.waitIdle()
	for i, s := range stores {
		if got := direct(t, s, "/kv/n"); got != "200 3" {
			t.Errorf("replica %d app: %q", i+1, got)
		}
	}
}

// A replica whose app is not up yet queues the committed entries and
// replays them when the app appears; the group keeps serving meanwhile.
func TestAppNotUpQueuesAndReplays(t *testing.T) {
	stores, addrs := kvApps(t, 3)
	// Replica 3's app "starts later": its dialer points at a closed port.
	closedAddr, err := freeport.Addr() // nobody listens there until the test says so
	if err != nil {
		t.Fatal(err)
	}
	late := addrs[2]
	addrs[2] = closedAddr
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs})
	client := &http.Client{Transport: &http.Transport{}}
	for i := 1; i <= 5; i++ {
		if code, body := do(t, client, "POST", "http://"+c.replicas[0].addr+"/incr/q", ""); code != 200 || body != strconv.Itoa(i) {
			t.Fatalf("incr %d: %d %q", i, code, body)
		}
	}
	client.CloseIdleConnections()
	// Replica 3 may lag behind the quorum; wait until it reached the OPEN.
	waitFor(t, "replica 3 to report its unreachable app", func() bool { return c.replicas[2].exec.Health() != nil })
	c.replicas[2].dialer.set(late)
	c.waitIdle()
	waitFor(t, "replica 3 queue to drain", func() bool { return c.replicas[2].exec.Health() == nil })
	if got := direct(t, stores[2], "/kv/q"); got != "200 5" {
		t.Fatalf("replica 3 app after replay: %q", got)
	}
}

// Pipelined requests in one write are answered in order.
func TestHTTPPipelining(t *testing.T) {
	_, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs})
	conn, err := net.Dial("tcp", c.replicas[2].addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "POST /incr/p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
	if _, err := conn.Write([]byte(req + req + req)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	f := framing.NewHTTP(framing.Options{})
	for i := 1; i <= 3; i++ {
		resp, err := f.ReadResponse(br, framing.Request{Op: "POST /incr/p"})
		if err != nil || !strings.HasSuffix(string(resp), "\r\n\r\n"+strconv.Itoa(i)) {
			t.Fatalf("response %d: %q %v", i, resp, err)
		}
	}
}

// lossyOrderer orders every proposal but reports "leader lost" (outcome
// unknown) for every other REQUEST, as raftcore does when leadership changes
// while a proposal is in flight.
type lossyOrderer struct {
	Orderer
	mu sync.Mutex
	n  int
}

func (o *lossyOrderer) Propose(ctx context.Context, p raftcore.Proposal) (raftcore.Result, error) {
	res, err := o.Orderer.Propose(ctx, p)
	if op, _ := DecodeOp(p.Data); op.Kind != KindRequest || err != nil {
		return res, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n++; o.n%2 == 1 {
		return raftcore.Result{}, fmt.Errorf("injected: %w", raftcore.ErrLeaderLost)
	}
	return res, nil
}

// A proposal with an unknown outcome is retried with the same (session,
// seq): the increment is applied exactly once and the client sees its result.
func TestRetriedProposalAppliesOnce(t *testing.T) {
	stores, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs,
		wrap: func(o Orderer) Orderer { return &lossyOrderer{Orderer: o} }})
	client := &http.Client{Transport: &http.Transport{}}
	for i := 1; i <= 4; i++ {
		if code, body := do(t, client, "POST", "http://"+c.replicas[0].addr+"/incr/once", ""); code != 200 || body != strconv.Itoa(i) {
			t.Fatalf("incr %d: %d %q", i, code, body)
		}
	}
	client.CloseIdleConnections()
	c.waitIdle()
	for i, s := range stores {
		if got := direct(t, s, "/kv/once"); got != "200 4" {
			t.Errorf("replica %d app: %q, want 200 4", i+1, got)
		}
	}
}

// tooLargeOrderer refuses requests as the ordering node does above its
// proposal limit.
type tooLargeOrderer struct{ Orderer }

func (o tooLargeOrderer) Propose(ctx context.Context, p raftcore.Proposal) (raftcore.Result, error) {
	if op, _ := DecodeOp(p.Data); op.Kind == KindRequest {
		return raftcore.Result{}, fmt.Errorf("group g: %w", raftcore.ErrTooLarge)
	}
	return o.Orderer.Propose(ctx, p)
}

func TestProposalAboveNodeLimitIsTooLarge(t *testing.T) {
	_, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs,
		wrap: func(o Orderer) Orderer { return tooLargeOrderer{o} }})
	got := rawExchange(t, c.replicas[0].addr, "PUT /kv/a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
	if !strings.HasPrefix(got, "HTTP/1.1 413 Content Too Large\r\n") {
		t.Fatalf("reply %q, want 413", got)
	}
}

// A client that waits for "100 Continue" before sending its body (curl does
// for large bodies) is not left waiting.
func TestHTTPExpectContinue(t *testing.T) {
	stores, addrs := kvApps(t, 3)
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs})
	conn, err := net.Dial("tcp", c.replicas[0].addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("PUT /kv/big HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("first line %q, %v; want 100 Continue", line, err)
	}
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	resp, err := framing.NewHTTP(framing.Options{}).ReadResponse(br, framing.Request{Op: "PUT /kv/big"})
	if err != nil || !strings.Contains(string(resp), "204 No Content") {
		t.Fatalf("response %q, %v", resp, err)
	}
	conn.Close()
	c.waitCaughtUp()
	for i, s := range stores {
		if got := direct(t, s, "/kv/big"); got != "200 hello" {
			t.Errorf("replica %d: %q", i+1, got)
		}
	}
}
