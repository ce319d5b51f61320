package framing

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// The fuzzers check more than "no panic": framed requests are bytes of the
// input within the limit, responses are exactly the next bytes of the input,
// errors are typed and every error has a non-empty protocol reply.

var respRequestSeeds = []string{
	"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
	"PING\r\nMULTI\r\nINCR a\r\nEXEC\r\n",
	"*1\r\n$-1\r\n", "*-1\r\n", "*0\r\n", "\r\n\n", "SUBSCRIBE x\r\n", "XREAD BLOCK 0 STREAMS s $\r\n",
	"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n", "*99999999999999999999\r\n",
	"*2\r\n$3\r\nGET\r\n$9223372036854775807\r\nk\r\n", "*1\r\n$9223372036854775806\r\n",
}

var respResponseSeeds = []string{
	"+OK\r\n", "-ERR x\r\n", ":1\r\n", "$3\r\nabc\r\n", "$-1\r\n", "*-1\r\n", "*2\r\n*1\r\n:1\r\n$0\r\n\r\n",
	"%1\r\n+a\r\n~2\r\n_\r\n#f\r\n", "|1\r\n+k\r\n+v\r\n,1.5\r\n", "=8\r\ntxt:abcd\r\n", "!3\r\nERR\r\n", ">1\r\n+x\r\n",
	"*9223372036854775807\r\n",
}

var httpRequestSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST /incr/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n",
	"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
	"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
	"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", "\r\n\r\n", "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
}

var httpResponseSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
	"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
	"HTTP/1.0 200 OK\r\n\r\nbody until close", "HTTP/1.1 101 Switching\r\n\r\n", "HTTP/1.1 200\r\n\r\n",
}

var fuzzLimits = Limits{MaxRequestBytes: 4096, MaxResponseBytes: 4096, MaxArgs: 64}

func fuzzRequests(t *testing.T, f Framer, data []byte) {
	r := bufio.NewReaderSize(bytes.NewReader(data), 16)
	for i := 0; i < len(data)+1; i++ {
		req, err := f.NextRequest(r)
		if err != nil {
			if req.Raw != nil && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error %v returned with Raw", err)
			}
			reply, _ := f.ErrorReply(err)
			if len(reply) == 0 {
				t.Fatalf("empty error reply for %v", err)
			}
			if !errors.Is(err, ErrUnsupported) || f.Protocol() != ProtoRESP {
				return
			}
		}
		if len(req.Raw) > fuzzLimits.MaxRequestBytes {
			t.Fatalf("request of %d bytes exceeds the limit", len(req.Raw))
		}
		// Skipped empty lines are not part of Raw, so check containment.
		if !bytes.Contains(data, req.Raw) {
			t.Fatalf("request %q is not in the input", req.Raw)
		}
	}
}

func fuzzResponses(t *testing.T, f Framer, data []byte, req Request) {
	src := &countingReader{r: bytes.NewReader(data)}
	r := bufio.NewReaderSize(src, 16)
	off := 0
	for i := 0; i < len(data)+1; i++ {
		resp, err := f.ReadResponse(r, req)
		if err != nil {
			if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrMalformed) &&
				!errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if !bytes.HasPrefix(data[off:], resp) {
			t.Fatalf("response %q is not the next bytes of the input", resp)
		}
		off += len(resp)
		if consumed := src.n - r.Buffered(); consumed != off {
			t.Fatalf("the reader consumed %d bytes, the response ends at %d", consumed, off)
		}
	}
}

func FuzzRESPRequest(f *testing.F) {
	for _, s := range respRequestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRequests(t, NewRESP(Options{Limits: fuzzLimits}), data)
	})
}

func FuzzRESPResponse(f *testing.F) {
	for _, s := range respResponseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzResponses(t, NewRESP(Options{Limits: fuzzLimits}), data, Request{})
	})
}

func FuzzHTTPRequest(f *testing.F) {
	for _, s := range httpRequestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRequests(t, NewHTTP(Options{Limits: fuzzLimits, HTTPGetReadOnly: true}), data)
	})
}

func FuzzHTTPResponse(f *testing.F) {
	for _, s := range httpResponseSeeds {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		req := Request{Op: "GET /"}
		if head {
			req.Op = "HEAD /"
		}
		fuzzResponses(t, NewHTTP(Options{Limits: fuzzLimits}), data, req)
	})
}
