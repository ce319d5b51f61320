package replication

import (
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
)

// An HTTP app with smr.io/http-pipelining that closes a shared connection
// on its own (a response with "Connection: close" nobody asked for) runs
// nothing written behind it: the executor sends those entries again on a
// new connection, so every entry runs exactly once however the run was cut.
func TestHTTPAnnouncedCloseResendsTheRest(t *testing.T) {
	var ran atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran.Add(1)
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	x, err := NewExecutor(ExecutorConfig{Group: testGroup, Self: 1, Ports: []Port{httpPort},
		Dialer: &addrDialer{addr: ln.Addr().String()}, HTTPPipelining: true})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	var log []raftcore.Entry
	add := func(session uint64, op Op) {
		log = append(log, raftcore.Entry{Index: uint64(len(log) + 1), Session: session, Seq: uint64(len(log) + 1), Origin: 1, Data: op.Encode()})
	}
	const sessions, requests = 5, 60
	for s := range uint64(sessions) {
		add(s+1, Op{Kind: KindOpen, Port: httpPort.Number, Protocol: framing.ProtoHTTP})
	}
	for i := range requests {
		path := "/inc"
		if i%7 == 3 {
			path = "/close"
		}
		add(uint64(i%sessions+1), Op{Kind: KindRequest, Port: httpPort.Number, Protocol: framing.ProtoHTTP, Name: "POST " + path,
			Raw: []byte("POST " + path + " HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")})
	}
	res := x.ApplyBatch(log)
	for i, r := range res[sessions:] {
		if r.Err != nil || !strings.HasPrefix(string(r.Value), "HTTP/1.1 204") {
			t.Fatalf("request %d: %q, %v; want 204", i, r.Value, r.Err)
		}
	}
	if got := ran.Load(); got != requests {
		t.Fatalf("the app ran %d requests, want each of the %d exactly once", got, requests)
	}
	if err := x.Health(); err != nil {
		t.Fatalf("Health = %v", err)
	}
}
