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
