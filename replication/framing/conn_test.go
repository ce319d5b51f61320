package framing

import (
	"bufio"
	"strings"
	"testing"
)

func TestEndsHTTPConnection(t *testing.T) {
	tests := []struct {
		name string
		req  string
		want bool
	}{
		{"HTTP/1.1 persists by default", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"Connection: close", "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", true},
		{"case-insensitive name and value", "GET / HTTP/1.1\r\nconnection: CLOSE\r\n\r\n", true},
		{"close as one token of a list", "GET / HTTP/1.1\r\nConnection: TE, close\r\n\r\n", true},
		{"close with spaces and tabs in the list", "GET / HTTP/1.1\r\nConnection: Upgrade ,\tClose \r\n\r\n", true},
		{"close in a repeated header", "GET / HTTP/1.1\r\nConnection: TE\r\nConnection: close\r\n\r\n", true},
		{"another token only", "GET / HTTP/1.1\r\nConnection: TE\r\n\r\n", false},
		{"close as part of a token is not close", "GET / HTTP/1.1\r\nConnection: closed, x-close\r\n\r\n", false},
		{"close in another header", "GET / HTTP/1.1\r\nX-Connection: close\r\nX: Connection: close\r\n\r\n", false},
		{"close in the body", "PUT /kv/a HTTP/1.1\r\nContent-Length: 19\r\n\r\nConnection: close\r\n", false},
		{"HTTP/1.0 ends by default", "GET / HTTP/1.0\r\n\r\n", true},
		{"HTTP/1.0 with keep-alive persists", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", false},
		{"HTTP/1.0 keep-alive and close", "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", true},
		{"HTTP/1.1 keep-alive", "GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", false},
		{"bare LF lines", "GET / HTTP/1.1\nConnection: close\n\n", true},
		{"chunked body", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		// Not a request head: the safe answer.
		{"empty", "", true},
		{"no request line", "Connection: keep-alive\r\n\r\n", true},
		{"truncated head", "GET / HTTP/1.1\r\nHost: a\r\n", true},
		{"RESP bytes", "*1\r\n$4\r\nPING\r\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EndsHTTPConnection([]byte(tt.req)); got != tt.want {
				t.Errorf("EndsHTTPConnection(%q) = %v, want %v", tt.req, got, tt.want)
			}
		})
	}
}

// A GET that ends its connection changes the connection, so it is never
// served as a local read even with the read-only annotation.
func TestHTTPRequestEndingConnIsNotReadOnly(t *testing.T) {
	tests := []struct {
		req  string
		want bool
	}{
		{"GET / HTTP/1.1\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false},
		{"HEAD / HTTP/1.0\r\n\r\n", false},
		{"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
	}
	for _, tt := range tests {
		req, err := NewHTTP(Options{HTTPGetReadOnly: true}).NextRequest(bufio.NewReader(strings.NewReader(tt.req)))
		if err != nil || req.ReadOnly != tt.want || EndsHTTPConnection(req.Raw) == tt.want {
			t.Errorf("%q: ReadOnly %v, ends %v, err %v; want ReadOnly %v", tt.req, req.ReadOnly, EndsHTTPConnection(req.Raw), err, tt.want)
		}
	}
}

func TestEndsHTTPResponseConnection(t *testing.T) {
	get, head := Request{Op: "GET /a"}, Request{Op: "HEAD /a"}
	tests := []struct {
		name string
		resp string
		req  Request
		want bool
	}{
		{"Content-Length keeps it", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", get, false},
		{"chunked keeps it", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", get, false},
		{"204 without length keeps it", "HTTP/1.1 204 No Content\r\n\r\n", get, false},
		{"304 without length keeps it", "HTTP/1.1 304 Not Modified\r\n\r\n", get, false},
		{"HEAD without length keeps it", "HTTP/1.1 200 OK\r\n\r\n", head, false},
		{"Connection: close", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nconnection: Close\r\n\r\n", get, true},
		{"close in a list", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: x, close\r\n\r\n", get, true},
		{"close-delimited body", "HTTP/1.1 200 OK\r\n\r\nuntil the end", get, true},
		{"non-chunked transfer coding reads to the end", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", get, true},
		{"HTTP/1.0 response", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", get, true},
		{"HTTP/1.0 keep-alive response", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", get, false},
		{"interim then kept", "HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", get, false},
		{"interim then closed", "HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", get, true},
		{"switching protocols", "HTTP/1.1 101 Switching Protocols\r\n\r\n", get, true},
		{"close in the body only", "HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\nConnection: close\r\n", get, false},
		{"empty", "", get, true},
		{"not a response", "+OK\r\n", get, true},
		{"head cut short", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", get, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EndsHTTPResponseConnection([]byte(tt.resp), tt.req); got != tt.want {
				t.Errorf("EndsHTTPResponseConnection(%q, %s) = %v, want %v", tt.resp, tt.req.Op, got, tt.want)
			}
		})
	}
}
