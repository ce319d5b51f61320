package kvstore

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestStore(t *testing.T) {
	s := New()
	steps := []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"GET", "/kv/a", "", 404, "no such key\n"},
		{"PUT", "/kv/a", "hello", 204, ""},
		{"GET", "/kv/a", "", 200, "hello"},
		{"HEAD", "/kv/a", "", 200, ""},
		{"POST", "/incr/n", "", 200, "1"},
		{"POST", "/incr/n", "", 200, "2"},
		{"POST", "/incr/a", "", 409, "value is not an integer\n"},
		{"GET", "/keys", "", 200, "a\nn\n"},
		{"DELETE", "/kv/a", "", 204, ""},
		{"DELETE", "/kv/a", "", 404, "no such key\n"},
		{"GET", "/kv/", "", 400, "key must be one non-empty path segment\n"},
		{"GET", "/kv/a/b", "", 400, "key must be one non-empty path segment\n"},
		{"GET", "/kv/" + strings.Repeat("k", 257), "", 400, "key longer than 256 bytes\n"},
		{"PUT", "/kv/big", strings.Repeat("v", MaxValueBytes+1), 413, "value larger than 1 MiB\n"},
		{"GET", "/incr/n", "", 405, "method not allowed\n"},
		{"PATCH", "/kv/n", "", 405, "method not allowed\n"},
		{"POST", "/keys", "", 405, "method not allowed\n"},
		{"GET", "/other", "", 404, "not found: use /kv/<key>, /incr/<key> or /keys\n"},
	}
	for i, st := range steps {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(st.method, st.path, strings.NewReader(st.body)))
		if rec.Code != st.code || rec.Body.String() != st.want {
			t.Errorf("step %d %s %s = %d %q, want %d %q", i, st.method, st.path, rec.Code, rec.Body.String(), st.code, st.want)
		}
	}
}

// Two stores fed the same requests produce byte-identical responses (no Date header).
func TestDeterministicResponses(t *testing.T) {
	srv1, srv2 := httptest.NewServer(New()), httptest.NewServer(New())
	defer srv1.Close()
	defer srv2.Close()
	for _, srv := range []*httptest.Server{srv1, srv2} {
		resp, err := http.Post(srv.URL+"/incr/x", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if _, ok := resp.Header["Date"]; ok {
			t.Fatalf("response has a Date header: %v", resp.Header)
		}
	}
}

func TestStateRoundTripAndRefusals(t *testing.T) {
	do := func(s *Store, method, path, body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		return rec
	}
	a, b := New(), New()
	for _, k := range []string{"x", "a", "m"} {
		do(a, "PUT", "/kv/"+k, "v-"+k)
	}
	for _, k := range []string{"m", "x", "a"} {
		do(b, "PUT", "/kv/"+k, "v-"+k)
	}
	sa, sb := do(a, "GET", StatePath, "").Body.String(), do(b, "GET", StatePath, "").Body.String()
	if sa != sb {
		t.Fatalf("equal stores answer different state bytes")
	}
	c := New()
	do(c, "PUT", "/kv/junk", "1")
	if rec := do(c, "PUT", StatePath, sa); rec.Code != 204 {
		t.Fatalf("install state: %d %s", rec.Code, rec.Body)
	}
	if got := do(c, "GET", "/keys", "").Body.String(); got != "a\nm\nx\n" {
		t.Fatalf("keys after install %q", got)
	}
	for name, bad := range map[string]string{
		"empty": "", "bad header": "hello", "truncated": sa[:len(sa)-2],
		"slash in key": stateMagic + "\x03a/b\x01v", "huge key": stateMagic + "\xff\xff\x03",
	} {
		if rec := do(c, "PUT", StatePath, bad); rec.Code != 400 {
			t.Errorf("%s: PUT state = %d, want 400", name, rec.Code)
		}
		if got := do(c, "GET", StatePath, "").Body.String(); got != sa {
			t.Errorf("%s: a refused state changed the store", name)
		}
	}
	if rec := do(c, "POST", StatePath, ""); rec.Code != 405 {
		t.Errorf("POST state = %d, want 405", rec.Code)
	}
}

// The store honours HTTP/1.1 pipelining (what smr.io/http-pipelining
// declares): requests written at once on one connection are answered in
// order with length-delimited responses, and the connection ends only after
// the request that asked for it.
func TestPipelinedRequestsAnsweredInOrder(t *testing.T) {
	st := New()
	srv := httptest.NewServer(st)
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	steps := []struct {
		req  string
		code int
		body string
	}{
		{"PUT /kv/n HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n\r\n41", 204, ""},
		{"POST /incr/n HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n", 200, "42"},
		{"GET /kv/n HTTP/1.1\r\nHost: s\r\n\r\n", 200, "42"},
		{"GET /kv/missing HTTP/1.1\r\nHost: s\r\n\r\n", 404, "no such key\n"},
		{"POST /incr/n HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n", 200, "43"},
		{"POST /incr/n HTTP/1.1\r\nHost: s\r\n\r\n", 0, ""}, // after the close: never run
	}
	var all strings.Builder
	for _, s := range steps {
		all.WriteString(s.req)
	}
	if _, err := io.WriteString(conn, all.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for i, s := range steps {
		if s.code == 0 {
			if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("bytes after the Connection: close response: %d, %v", n, err)
			}
			continue
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != s.code || string(body) != s.body {
			t.Fatalf("response %d: %d %q %v, want %d %q", i+1, resp.StatusCode, body, err, s.code, s.body)
		}
		if delimited := resp.ContentLength >= 0 || slices.Contains(resp.TransferEncoding, "chunked"); !delimited {
			t.Errorf("response %d is close-delimited", i+1)
		}
	}
	rec := httptest.NewRecorder()
	st.ServeHTTP(rec, httptest.NewRequest("GET", "/kv/n", nil))
	if rec.Body.String() != "43" {
		t.Errorf("n = %q after the pipeline, want 43 (the request after the close must not run)", rec.Body.String())
	}
}
