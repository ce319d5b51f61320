package framing

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// The response matcher: the executor writes a run of requests to one app
// connection and then calls ReadResponse once per request, in order, on
// one bufio.Reader. These fuzzers build such a stream from the fuzzer's
// bytes (several well-formed responses of every shape the framer knows,
// then the rest of the input as arbitrary bytes) and check that each
// response comes back exactly, one by one, that the reader never consumed
// a byte past the response it returned, and that what follows the
// well-formed ones yields exact next bytes or a typed error, never a panic.

// choices turns fuzzer bytes into decisions; exhausted, it answers 0.
type choices struct{ b []byte }

func (c *choices) n(k int) int {
	if len(c.b) == 0 || k <= 1 {
		return 0
	}
	v := int(c.b[0]) % k
	c.b = c.b[1:]
	return v
}

// bytes returns up to max bytes of the input, as raw data.
func (c *choices) bytes(max int) []byte {
	n := min(c.n(max+1), len(c.b))
	out := c.b[:n:n]
	c.b = c.b[n:]
	return out
}

// line returns text without CR or LF (a simple string's content).
func (c *choices) line(max int) string {
	return strings.NewReplacer("\r", "r", "\n", "n").Replace(string(c.bytes(max)))
}

// countingReader counts the bytes bufio took from the stream.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// streamLimits are large enough for every generated response.
var streamLimits = Limits{MaxRequestBytes: 1 << 16, MaxResponseBytes: 1 << 16, MaxArgs: 64}

// genRESP appends one well-formed RESP2/RESP3 value.
func genRESP(c *choices, b *bytes.Buffer, depth int) {
	kinds := 15
	if depth >= 3 {
		kinds = 10 // no more aggregates
	}
	switch c.n(kinds) {
	case 0:
		fmt.Fprintf(b, "+%s\r\n", c.line(12))
	case 1:
		fmt.Fprintf(b, "-ERR %s\r\n", c.line(12))
	case 2:
		fmt.Fprintf(b, ":%d\r\n", c.n(1<<8)-100)
	case 3:
		data := c.bytes(40) // binary, CRLF and RESP syntax included
		fmt.Fprintf(b, "$%d\r\n%s\r\n", len(data), data)
	case 4:
		b.WriteString("$-1\r\n")
	case 5:
		b.WriteString([]string{"_\r\n", "#t\r\n", ",1.5\r\n", "(12345678901234567890\r\n", ",inf\r\n"}[c.n(5)])
	case 6:
		data := c.bytes(20)
		fmt.Fprintf(b, "!%d\r\n%s\r\n", len(data), data)
	case 7:
		data := "txt:" + string(c.bytes(20))
		fmt.Fprintf(b, "=%d\r\n%s\r\n", len(data), data)
	case 8:
		b.WriteString("*-1\r\n")
	case 9:
		b.WriteString("*0\r\n")
	case 10, 11: // array, set
		n := c.n(4)
		fmt.Fprintf(b, "%c%d\r\n", "*~"[c.n(2)], n)
		for range n {
			genRESP(c, b, depth+1)
		}
	case 12: // map
		n := c.n(3)
		fmt.Fprintf(b, "%%%d\r\n", n)
		for range 2 * n {
			genRESP(c, b, depth+1)
		}
	default: // attribute, then the value it annotates
		n := c.n(2) + 1
		fmt.Fprintf(b, "|%d\r\n", n)
		for range 2 * n {
			genRESP(c, b, depth+1)
		}
		genRESP(c, b, depth+1)
	}
}

// genHTTP appends one response to a GET or HEAD (the request it answers is
// returned) and says whether it is close-delimited (it must end the stream)
// and whether the app ends the connection after it.
func genHTTP(c *choices, b *bytes.Buffer, allowClose bool) (req Request, closeDelimited, ends bool) {
	req = Request{Op: "GET /kv/a"}
	head := c.n(5) == 0
	if head {
		req.Op = "HEAD /kv/a"
	}
	eol := "\r\n"
	if c.n(6) == 0 {
		eol = "\n" // bare LF lines are accepted
	}
	hdr := func(name, value string) {
		if c.n(2) == 0 {
			name = strings.ToLower(name)
		}
		fmt.Fprintf(b, "%s: %s%s", name, value, eol)
	}
	for range c.n(3) { // interim responses precede the final one
		fmt.Fprintf(b, "HTTP/1.1 %d Interim%s", []int{100, 102, 103}[c.n(3)], eol)
		if c.n(2) == 0 {
			hdr("Link", "</a>; rel=preload")
		}
		b.WriteString(eol)
	}
	codes := []int{200, 201, 204, 304, 404, 500}
	code := codes[c.n(len(codes))]
	minor := c.n(2)
	fmt.Fprintf(b, "HTTP/1.%d %d %s%s", minor, code, c.line(6), eol)
	hdr("Content-Type", "text/plain")
	switch c.n(4) {
	case 0:
		hdr("Connection", "close")
		ends = true
	case 1:
		hdr("Connection", "keep-alive")
	default:
		ends = minor == 0
	}
	body := c.bytes(60) // may hold CRLFs and whole fake responses
	bodyless := head || code == 204 || code == 304
	switch mode := c.n(3); {
	case mode == 2 && allowClose && !bodyless:
		// Close-delimited: the body runs to the end of the stream.
		b.WriteString(eol)
		b.Write(body)
		return req, true, true
	case mode == 1 && code != 204 && code != 304:
		hdr("Transfer-Encoding", "chunked")
		b.WriteString(eol)
		if bodyless {
			return req, false, ends
		}
		for len(body) > 0 {
			n := min(len(body), c.n(20)+1)
			size := fmt.Sprintf("%x", n)
			if c.n(2) == 0 {
				size = strings.ToUpper(size)
			}
			if c.n(4) == 0 {
				size += ";ext=1"
			}
			fmt.Fprintf(b, "%s\r\n%s\r\n", size, body[:n])
			body = body[n:]
		}
		b.WriteString("0\r\n")
		if c.n(3) == 0 {
			b.WriteString("X-Trailer: 1\r\n")
		}
		b.WriteString("\r\n")
	default:
		if code != 204 {
			hdr("Content-Length", fmt.Sprint(len(body)))
		}
		b.WriteString(eol)
		if !bodyless {
			b.Write(body)
		}
	}
	return req, false, ends
}

// checkStream reads want (each response with the request it answers) and
// then the rest of stream from one reader, as the executor drains a run.
func checkStream(t *testing.T, f Framer, stream []byte, want [][]byte, reqs []Request, bufSize int) {
	t.Helper()
	src := &countingReader{r: bytes.NewReader(stream)}
	r := bufio.NewReaderSize(src, bufSize)
	off := 0
	for i, w := range want {
		got, err := f.ReadResponse(r, reqs[i])
		if err != nil || !bytes.Equal(got, w) {
			t.Fatalf("response %d of %d: got %q, %v; want %q", i+1, len(want), got, err, w)
		}
		off += len(w)
		if consumed := src.n - r.Buffered(); consumed != off {
			t.Fatalf("after response %d the reader consumed %d bytes, the response ends at %d", i+1, consumed, off)
		}
	}
	// The rest: arbitrary bytes. Whatever is returned is exactly the next
	// bytes; anything else is a typed error.
	req := Request{Op: "GET /"}
	if len(reqs) > 0 {
		req = reqs[len(reqs)-1]
	}
	for range len(stream) - off + 1 {
		got, err := f.ReadResponse(r, req)
		if err != nil {
			if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrMalformed) &&
				!errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if !bytes.HasPrefix(stream[off:], got) {
			t.Fatalf("response %q is not the next bytes of the stream", got)
		}
		off += len(got)
		if consumed := src.n - r.Buffered(); consumed != off {
			t.Fatalf("the reader consumed %d bytes, the response ends at %d", consumed, off)
		}
	}
}

var streamSeeds = []string{
	"", "\x00", "\x03\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a",
	"\x07\x0b\x03\x0c\x02\x0d\x01\x0e\x00+OK\r\n",
	"\x05\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01",
	"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0HTTP/1.1 200 OK\r\n\r\n",
}

func FuzzRESPResponseStream(f *testing.F) {
	for _, s := range streamSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("\x02\x03\x0a\x03\x01\x05\x00*1\r\n:1\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &choices{b: data}
		bufSize := []int{16, 64, 4096}[c.n(3)]
		var stream bytes.Buffer
		var want [][]byte
		var reqs []Request
		for range c.n(8) + 1 {
			start := stream.Len()
			genRESP(c, &stream, 0)
			want = append(want, bytes.Clone(stream.Bytes()[start:]))
			reqs = append(reqs, Request{Op: "GET"})
		}
		stream.Write(c.b) // the unused input: arbitrary bytes after them
		checkStream(t, NewRESP(Options{Limits: streamLimits}), stream.Bytes(), want, reqs, bufSize)
	})
}

func FuzzHTTPResponseStream(f *testing.F) {
	for _, s := range streamSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("\x03\x02\x01\x01\x02\x00\x01\x05\x02\x10hello world, hi!\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &choices{b: data}
		bufSize := []int{16, 64, 4096}[c.n(3)]
		var stream bytes.Buffer
		var want [][]byte
		var reqs []Request
		n := c.n(6) + 1
		closed := false
		for i := range n {
			start := stream.Len()
			req, closeDelimited, ends := genHTTP(c, &stream, i == n-1)
			want = append(want, bytes.Clone(stream.Bytes()[start:]))
			if got := EndsHTTPResponseConnection(want[i], req); got != ends {
				t.Fatalf("EndsHTTPResponseConnection(%q, %s) = %v, want %v", want[i], req.Op, got, ends)
			}
			reqs = append(reqs, req)
			closed = closeDelimited
		}
		if !closed {
			stream.Write(c.b) // the unused input: arbitrary bytes after them
		}
		checkStream(t, NewHTTP(Options{Limits: streamLimits}), stream.Bytes(), want, reqs, bufSize)
	})
}
