package framing

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestHTTPRequests(t *testing.T) {
	get := "GET /kv/a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
	put := "PUT /kv/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
	chunked := "POST /incr/a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
	type want struct {
		raw, op string
		ro      bool
	}
	tests := []struct {
		name   string
		getRO  bool
		in     string
		expect []want
	}{
		{"GET without body", false, get, []want{{get, "GET /kv/a", false}}},
		{"GET read-only with the annotation", true, get, []want{{get, "GET /kv/a", true}}},
		{"keep-alive sequence", true, get + put + chunked + get,
			[]want{{get, "GET /kv/a", true}, {put, "PUT /kv/a", false}, {chunked, "POST /incr/a", false}, {get, "GET /kv/a", true}}},
		{"HEAD", true, "HEAD / HTTP/1.1\r\n\r\n", []want{{"HEAD / HTTP/1.1\r\n\r\n", "HEAD /", true}}},
		{"leading empty line ignored", false, "\r\n" + get, []want{{get, "GET /kv/a", false}}},
		{"bare LF lines", false, "DELETE /kv/a HTTP/1.1\nContent-Length: 0\n\n", []want{{"DELETE /kv/a HTTP/1.1\nContent-Length: 0\n\n", "DELETE /kv/a", false}}},
		{"identical Content-Length list", false, "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx",
			[]want{{"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx", "POST /", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := frameAll(t, NewHTTP(Options{HTTPGetReadOnly: tt.getRO}), tt.in)
			if err != nil {
				t.Fatalf("frame: %v", err)
			}
			if len(got) != len(tt.expect) {
				t.Fatalf("got %d requests, want %d", len(got), len(tt.expect))
			}
			for i, w := range tt.expect {
				if string(got[i].Raw) != w.raw || got[i].Op != w.op || got[i].ReadOnly != w.ro {
					t.Errorf("request %d = {%q %q %v}, want {%q %q %v}", i, got[i].Raw, got[i].Op, got[i].ReadOnly, w.raw, w.op, w.ro)
				}
			}
		})
	}
}

func TestHTTPBadRequests(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"not HTTP", "HELLO\r\n\r\n", ErrMalformed},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\n", ErrMalformed},
		{"bad header", "GET / HTTP/1.1\r\nNoColon\r\n\r\n", ErrMalformed},
		{"space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", ErrMalformed},
		{"obs-fold", "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", ErrMalformed},
		{"bad Content-Length", "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", ErrMalformed},
		{"conflicting Content-Length", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", ErrMalformed},
		{"TE and CL", "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", ErrMalformed},
		{"TE not chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", ErrMalformed},
		{"bad chunk size", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", ErrMalformed},
		{"chunk without CRLF", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc", ErrMalformed},
		{"body too large", "POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n", ErrTooLarge},
		{"chunk too large", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n", ErrTooLarge},
		{"headers too large", "GET / HTTP/1.1\r\nA: " + strings.Repeat("b", 300) + "\r\n\r\n", ErrTooLarge},
		{"truncated body", "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", io.ErrUnexpectedEOF},
		{"truncated headers", "GET / HTTP/1.1\r\nHost: h\r\n", io.ErrUnexpectedEOF},
		{"CONNECT", "CONNECT h:443 HTTP/1.1\r\n\r\n", ErrUnsupported},
		{"websocket upgrade", "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := frameAll(t, NewHTTP(Options{Limits: Limits{MaxRequestBytes: 256}}), tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestHTTPResponses(t *testing.T) {
	ok := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
	tests := []struct {
		name  string
		reqOp string
		in    string
		eof   bool // close-delimited: the whole stream is the response
	}{
		{"content-length", "GET /", ok, false},
		{"chunked", "GET /", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", false},
		{"HEAD has no body despite Content-Length", "HEAD /", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", false},
		{"204 no body", "DELETE /", "HTTP/1.1 204 No Content\r\n\r\n", false},
		{"304 no body", "GET /", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false},
		{"100 Continue then final", "POST /", "HTTP/1.1 100 Continue\r\n\r\n" + ok, false},
		{"no reason phrase", "GET /", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false},
		{"close-delimited", "GET /", "HTTP/1.0 200 OK\r\n\r\nuntil the end", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := tt.in
			if !tt.eof {
				stream += ok
			}
			r := reader(stream)
			f := NewHTTP(Options{})
			got, err := f.ReadResponse(r, Request{Op: tt.reqOp})
			if err != nil || string(got) != tt.in {
				t.Fatalf("got %q, %v; want %q", got, err, tt.in)
			}
			if tt.eof {
				return
			}
			next, err := f.ReadResponse(r, Request{Op: "GET /"})
			if err != nil || string(next) != ok {
				t.Fatalf("following response %q, %v", next, err)
			}
		})
	}
}

func TestHTTPBadResponses(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"garbage", "hello\r\n\r\n", ErrMalformed},
		{"bad code", "HTTP/1.1 2x0 OK\r\n\r\n", ErrMalformed},
		{"101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", ErrUnsupported},
		{"too large", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", ErrTooLarge},
		{"close-delimited too large", "HTTP/1.1 200 OK\r\n\r\n" + strings.Repeat("x", 200), ErrTooLarge},
		{"truncated", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", io.ErrUnexpectedEOF},
		{"clean EOF", "", io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewHTTP(Options{Limits: Limits{MaxResponseBytes: 128}}).ReadResponse(reader(tt.in), Request{Op: "GET /"})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestHTTPErrorReply(t *testing.T) {
	tests := []struct {
		err    error
		status string
	}{
		{errorf(ErrMalformed, "x\r\ny"), "HTTP/1.1 400 Bad Request\r\n"},
		{errorf(ErrTooLarge, "big"), "HTTP/1.1 413 Content Too Large\r\n"},
		{errorf(ErrUnsupported, "ws"), "HTTP/1.1 501 Not Implemented\r\n"},
		{errors.New("no quorum"), "HTTP/1.1 503 Service Unavailable\r\n"},
	}
	for _, tt := range tests {
		reply, closeConn := NewHTTP(Options{}).ErrorReply(tt.err)
		if !closeConn || !strings.HasPrefix(string(reply), tt.status) || !strings.Contains(string(reply), "Connection: close\r\n") {
			t.Errorf("ErrorReply(%v) = %q, %v", tt.err, reply, closeConn)
		}
		// The reply itself must frame as exactly one HTTP response.
		got, err := NewHTTP(Options{}).ReadResponse(reader(string(reply)), Request{Op: "GET /"})
		if err != nil || string(got) != string(reply) {
			t.Errorf("reply does not frame: %v", err)
		}
	}
}

// chunkReader returns one chunk per Read, as a client that waits between
// the headers and the body.
type chunkReader struct{ chunks []string }

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks[0] = c.chunks[0][n:]
	if c.chunks[0] == "" {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

func TestHTTPExpectContinue(t *testing.T) {
	head := "PUT /kv/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
	tests := []struct {
		name   string
		chunks []string
		limit  int
		calls  int
		err    error
	}{
		{"client waits for 100", []string{head, "hello"}, 0, 1, nil},
		{"body already sent", []string{head + "hello"}, 0, 0, nil},
		{"too large: no 100, 413", []string{head}, 66, 0, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			f := NewHTTP(Options{Limits: Limits{MaxRequestBytes: tt.limit}, OnExpectContinue: func() { calls++ }})
			req, err := f.NextRequest(bufio.NewReader(&chunkReader{chunks: tt.chunks}))
			if !errors.Is(err, tt.err) || calls != tt.calls {
				t.Fatalf("err=%v calls=%d, want %v and %d", err, calls, tt.err, tt.calls)
			}
			if err == nil && string(req.Raw) != head+"hello" {
				t.Fatalf("raw %q", req.Raw)
			}
		})
	}
}
