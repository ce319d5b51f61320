package kvstore

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
