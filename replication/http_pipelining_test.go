package replication

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smr-io/smr-cri/examples/kvstore"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

// countedKVApp starts a kvstore app that counts the connections it accepted.
func countedKVApp(t *testing.T) (*kvstore.Store, string, *atomic.Int64) {
	t.Helper()
	s := kvstore.New()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(s)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return s, srv.Listener.Addr().String(), &conns
}

// Without smr.io/http-pipelining every HTTP session keeps its own app
// connection (dialed at its OPEN, one round trip per entry, as before the
// pipeline); with it, sessions share one pipelined connection and only a
// request that ends its connection gets one of its own. The replies are the
// log's order either way.
func TestHTTPPipeliningConnections(t *testing.T) {
	const sessions, rounds = 4, 3
	tests := []struct {
		name       string
		pipelining bool
		closeLast  bool // the last session's last request sends Connection: close
		wantConns  int64
		wantRuns   bool // some pipeline run held more than one entry
	}{
		{"off: one connection per session", false, false, sessions, false},
		{"off, with Connection: close", false, true, sessions, false},
		{"on: one shared connection", true, false, 1, true},
		{"on, Connection: close goes on its own connection", true, true, 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store, addr, conns := countedKVApp(t)
			reg := prometheus.NewRegistry()
			metrics, err := NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			x, err := NewExecutor(ExecutorConfig{Group: "g", Self: 1, Ports: []Port{{8080, framing.ProtoHTTP}},
				Dialer: &addrDialer{addr: addr}, HTTPPipelining: tt.pipelining, Metrics: metrics})
			if err != nil {
				t.Fatal(err)
			}
			defer x.Close()
			var batch []raftcore.Entry
			seq := map[uint64]uint64{}
			add := func(session uint64, op Op) {
				seq[session]++
				batch = append(batch, raftcore.Entry{Group: "g", Index: uint64(len(batch) + 1), Session: session,
					Seq: seq[session], Origin: 1, Data: op.Encode()})
			}
			for s := uint64(1); s <= sessions; s++ {
				add(s, Op{Kind: KindOpen, Port: 8080, Protocol: framing.ProtoHTTP})
			}
			var want []string // expected reply per entry ("" = none)
			for range sessions {
				want = append(want, "")
			}
			for r := range rounds {
				for s := uint64(1); s <= sessions; s++ {
					hdr := ""
					if tt.closeLast && s == sessions && r == rounds-1 {
						hdr = "Connection: close\r\n"
					}
					add(s, Op{Kind: KindRequest, Name: "POST /incr/n",
						Raw: []byte("POST /incr/n HTTP/1.1\r\nHost: a\r\n" + hdr + "Content-Length: 0\r\n\r\n")})
					want = append(want, fmt.Sprintf("\r\n\r\n%d", r*sessions+int(s)))
				}
			}
			for s := uint64(1); s <= sessions; s++ {
				add(s, Op{Kind: KindClose})
				want = append(want, "")
			}
			for i, res := range x.ApplyBatch(batch) {
				if res.Err != nil || !strings.HasSuffix(string(res.Value), want[i]) || (want[i] == "" && res.Value != nil) {
					t.Errorf("entry %d: %q, %v; want suffix %q", i+1, res.Value, res.Err, want[i])
				}
			}
			if got := conns.Load(); got != tt.wantConns {
				t.Errorf("the app accepted %d connections, want %d", got, tt.wantConns)
			}
			if got := direct(t, store, "/kv/n"); got != fmt.Sprintf("200 %d", sessions*rounds) {
				t.Errorf("app state %q", got)
			}
			runs, entries := pipelineRuns(t, reg)
			if (entries > runs) != tt.wantRuns {
				t.Errorf("%d pipeline runs held %d entries; want runs of several entries: %v", runs, entries, tt.wantRuns)
			}
		})
	}
}

// rawPipeline writes reqs at once on a new connection to addr and reads
// until the server closes it (bounded, so a server that keeps the
// connection open fails the test instead of hanging it).
func rawPipeline(addr string, reqs ...string) (string, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte(strings.Join(reqs, ""))); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

// With smr.io/http-pipelining, 3 replicas of the kvstore app serve many
// concurrent HTTP sessions through pipelined app connections: keep-alive
// clients, clients sending Connection: close on every request, HTTP/1.0
// clients, and raw pipelines with a Connection: close in the middle (the
// requests after it are never run). Every reply is the right one, every
// replica's store ends equal, the pipeline ran several entries per app
// round trip, and no replica became uncertain.
func TestHTTPPipeliningThreeReplicas(t *testing.T) {
	const (
		sessions = 30
		iters    = 8
	)
	var stores []*kvstore.Store
	var addrs []string
	var conns []*atomic.Int64
	for range 3 {
		s, a, n := countedKVApp(t)
		stores, addrs, conns = append(stores, s), append(addrs, a), append(conns, n)
	}
	c := newCluster(t, clusterOpts{port: httpPort, appAddrs: addrs, exec: func(cfg *ExecutorConfig) { cfg.HTTPPipelining = true }})
	var incrs, closeRequests atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, sessions*iters)
	for g := range sessions {
		addr := c.replicas[g%len(c.replicas)].addr
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch g % 6 {
			case 0: // Connection: close on every request: a session per request
				client := &http.Client{Transport: &http.Transport{}}
				defer client.CloseIdleConnections()
				for i := range iters {
					req, _ := http.NewRequest("PUT", fmt.Sprintf("http://%s/kv/c%d", addr, g), strings.NewReader(strconv.Itoa(i)))
					req.Close = true
					resp, err := client.Do(req)
					if err != nil {
						errs <- fmt.Errorf("session %d: PUT with Connection: close: %w", g, err)
						return
					}
					_ = resp.Body.Close()
					closeRequests.Add(1)
					if resp.StatusCode != 204 {
						errs <- fmt.Errorf("session %d: PUT with Connection: close: %d", g, resp.StatusCode)
						return
					}
				}
			case 1: // raw pipelines with Connection: close in the middle
				for range iters / 2 {
					incr := "POST /incr/total HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
					last := "POST /incr/total HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
					got, err := rawPipeline(addr, incr, last, incr, incr)
					if n := strings.Count(got, "HTTP/1.1 200 OK"); err != nil || n != 2 {
						errs <- fmt.Errorf("session %d: pipeline with a close in the middle: %d responses, %v: %q", g, n, err, got)
						return
					}
					incrs.Add(2)
					closeRequests.Add(1)
				}
			case 2: // HTTP/1.0 without keep-alive: the server closes after the response
				for range iters / 2 {
					got, err := rawPipeline(addr, "POST /incr/total HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
					if err != nil || !strings.HasPrefix(got, "HTTP/1.0 200 OK") { // Go answers in the request's version
						errs <- fmt.Errorf("session %d: HTTP/1.0 request: %v: %q", g, err, got)
						return
					}
					incrs.Add(1)
					closeRequests.Add(1)
				}
			default: // one keep-alive session: PUT, GET, POST
				client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
				defer client.CloseIdleConnections()
				for i := range iters {
					key := fmt.Sprintf("http://%s/kv/k%d", addr, g)
					if code, _, err := doErr(client, "PUT", key, fmt.Sprintf("v%d", i)); err != nil || code != 204 {
						errs <- fmt.Errorf("session %d: PUT: %d %v", g, code, err)
						return
					}
					if code, body, err := doErr(client, "GET", key, ""); err != nil || code != 200 || body != fmt.Sprintf("v%d", i) {
						errs <- fmt.Errorf("session %d: GET after PUT v%d: %d %q %v", g, i, code, body, err)
						return
					}
					if code, _, err := doErr(client, "POST", fmt.Sprintf("http://%s/incr/total", addr), ""); err != nil || code != 200 {
						errs <- fmt.Errorf("session %d: POST: %d %v", g, code, err)
						return
					}
					incrs.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	c.waitIdle()
	want := direct(t, stores[0], kvstore.StatePath)
	for i, s := range stores {
		if got := direct(t, s, "/kv/total"); got != fmt.Sprintf("200 %d", incrs.Load()) {
			t.Errorf("replica %d: total %q, want %d increments", i+1, got, incrs.Load())
		}
		if got := direct(t, s, kvstore.StatePath); got != want {
			t.Errorf("replica %d's store differs from replica 1's:\n%q\n%q", i+1, got, want)
		}
		if err := c.replicas[i].exec.Health(); err != nil {
			t.Errorf("replica %d: %v", i+1, err)
		}
	}
	runs, entries := pipelineRuns(t, c.reg)
	t.Logf("pipeline: %d runs, %d entries; app connections per replica: %d %d %d for %d requests ending their connection",
		runs, entries, conns[0].Load(), conns[1].Load(), conns[2].Load(), closeRequests.Load())
	if entries <= runs {
		t.Errorf("every pipeline run held one entry (%d runs, %d entries): HTTP sessions were not pipelined", runs, entries)
	}
	// Each request that ends its connection had a connection of its own;
	// the keep-alive sessions shared theirs.
	keepAlive := int64(0)
	for g := range sessions {
		if g%6 > 2 {
			keepAlive++
		}
	}
	for i, n := range conns {
		if got := n.Load(); got < closeRequests.Load() || got >= closeRequests.Load()+keepAlive {
			t.Errorf("replica %d's app accepted %d connections; want %d (one per request ending its connection) plus fewer than %d (the keep-alive sessions share)",
				i+1, got, closeRequests.Load(), keepAlive)
		}
	}
}

// doErr is do without t: for client goroutines.
func doErr(client *http.Client, method, url, body string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// The pod annotation reaches the executor: with smr.io/http-pipelining the
// sessions of six successive clients share one app connection per replica
// (without it each would have its own).
func TestStartPodHTTPPipeliningAnnotation(t *testing.T) {
	network := memnet.New()
	t.Cleanup(network.Close) // after the pods stop (cleanups run last-in first-out)
	dir := t.TempDir()
	var addrs []string
	var stores []*kvstore.Store
	var conns []*atomic.Int64
	for i := range 3 {
		store, app, n := countedKVApp(t)
		stores = append(stores, store)
		p, addr := kvPodWith(t, network, dir, i, app, nil, map[string]string{podcontract.AnnotationHTTPPipelining: "true"})
		if !p.exec.cfg.HTTPPipelining {
			t.Fatalf("replica %d: ExecutorConfig.HTTPPipelining is false with the annotation", i+1)
		}
		addrs, conns = append(addrs, addr), append(conns, n)
	}
	const clients = 6
	for i := range clients {
		incr(t, addrs[i%3], i+1) // a new client connection: a new session
	}
	waitFor(t, "every replica to apply the increments", func() bool {
		for _, s := range stores {
			if direct(t, s, "/kv/c") != fmt.Sprintf("200 %d", clients) {
				return false
			}
		}
		return true
	})
	for i, n := range conns {
		if got := n.Load(); got >= clients {
			t.Errorf("replica %d's app accepted %d connections for %d sessions: they did not share", i+1, got, clients)
		}
	}
}
