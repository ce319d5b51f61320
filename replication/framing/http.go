package framing

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// HTTP frames HTTP/1.1 (and 1.0) requests and responses: bodies delimited by
// Content-Length or chunked transfer coding, requests without a body, several
// requests on one keep-alive connection, interim 1xx responses, and the
// responses that never carry a body (to HEAD, and 1xx/204/304).
//
// Requests that carry both Content-Length and Transfer-Encoding, or a
// transfer coding other than chunked, are refused as malformed: they are the
// classic request-smuggling shapes and a proxy must not guess. Protocol
// upgrades (WebSocket, h2c) and CONNECT are refused as unsupported.
type HTTP struct {
	lim        Limits
	getRO      bool
	onContinue func()
}

// NewHTTP returns an HTTP/1.1 framer for one connection.
func NewHTTP(opts Options) *HTTP {
	return &HTTP{lim: opts.Limits.withDefaults(), getRO: opts.HTTPGetReadOnly, onContinue: opts.OnExpectContinue}
}

// Protocol implements Framer.
func (f *HTTP) Protocol() string { return ProtoHTTP }

// header facts that decide where a message body ends.
type httpHeaders struct {
	contentLength int64 // -1 when absent
	hasTE         bool
	chunked       bool // the final transfer coding is chunked
	upgrade       bool
	expect100     bool
	// The Connection header's tokens that decide whether the connection
	// persists after this message (RFC 9112 9.3).
	connClose     bool
	connKeepAlive bool
}

// endsConn: after this message the connection ends (RFC 9112 9.3): it
// carries "Connection: close", or it is HTTP/1.0 without "keep-alive".
func (h httpHeaders) endsConn(http10 bool) bool {
	return h.connClose || (http10 && !h.connKeepAlive)
}

// NextRequest implements Framer.
func (f *HTTP) NextRequest(r *bufio.Reader) (Request, error) {
	max := f.lim.MaxRequestBytes
	var raw, line []byte
	var err error
	// RFC 9112 2.2: a server SHOULD ignore empty lines before the request-line.
	for {
		if _, err := r.Peek(1); err != nil {
			return Request{}, err // clean close between requests
		}
		raw, line, err = readLine(r, raw[:0], max, "request line")
		if err != nil {
			return Request{}, unexpectedEOF(err)
		}
		if len(trimEOL(line)) > 0 {
			break
		}
	}
	method, target, err := parseRequestLine(trimEOL(line))
	if err != nil {
		return Request{}, err
	}
	raw, h, err := readHeaders(r, raw, max, "request")
	if err != nil {
		return Request{}, err
	}
	path := target
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	req := Request{Op: string(method) + " " + string(path)}
	switch {
	case string(method) == "CONNECT":
		return req, errorf(ErrUnsupported, "CONNECT tunnels cannot be replicated")
	case h.upgrade:
		return req, errorf(ErrUnsupported, "protocol upgrades (WebSocket, h2c) cannot be replicated")
	case h.hasTE && h.contentLength >= 0:
		return req, errorf(ErrMalformed, "request has both Transfer-Encoding and Content-Length")
	case h.hasTE && !h.chunked:
		return req, errorf(ErrMalformed, "request transfer coding must end with chunked")
	case h.expect100 && f.onContinue != nil && (h.chunked || h.contentLength > 0) &&
		fits(len(raw), max64(h.contentLength, 0), 0, max) && r.Buffered() == 0:
		// The client waits for 100 Continue before it sends the body.
		f.onContinue()
		fallthrough
	default:
		raw, err = f.readBody(r, raw, h, max)
	}
	if err != nil {
		return req, err
	}
	req.Raw = raw
	// A request that ends its connection is never read-only: it changes the
	// connection, so it is ordered and runs on its session's own app
	// connection, never on a shared (pipelined) one.
	req.ReadOnly = f.getRO && (string(method) == "GET" || string(method) == "HEAD") &&
		!h.endsConn(bytes.HasSuffix(trimEOL(line), []byte(" HTTP/1.0")))
	return req, nil
}

// EndsHTTPConnection reports whether the server ends the connection after
// answering the HTTP request raw (as NextRequest framed it): it carries
// "Connection: close" (case-insensitive, alone or as one option of a list),
// or it is an HTTP/1.0 request without "Connection: keep-alive" (RFC 9112
// 9.3, 9.6). Such a request must not be pipelined on a connection that
// other requests share. Bytes that are not a request's head count as ending
// the connection: that answer is always safe.
func EndsHTTPConnection(raw []byte) bool {
	r := bufio.NewReaderSize(bytes.NewReader(raw), 256)
	_, line, err := readLine(r, nil, len(raw), "request line")
	if err != nil {
		return true
	}
	if _, _, err := parseRequestLine(trimEOL(line)); err != nil {
		return true
	}
	_, h, err := readHeaders(r, nil, len(raw), "request")
	return err != nil || h.endsConn(bytes.HasSuffix(trimEOL(line), []byte(" HTTP/1.0")))
}

// readBody appends the request body delimited as the headers say.
func (f *HTTP) readBody(r *bufio.Reader, raw []byte, h httpHeaders, max int) ([]byte, error) {
	var err error
	switch {
	case h.chunked:
		raw, err = readChunked(r, raw, max, "request")
	case h.contentLength > 0:
		if !fits(len(raw), h.contentLength, 0, max) {
			return raw, errorf(ErrTooLarge, "request body of %d bytes exceeds the %d byte limit", h.contentLength, max)
		}
		raw, err = readN(r, raw, int(h.contentLength))
		err = unexpectedEOF(err)
	}
	return raw, err
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// parseRequestLine splits "METHOD target HTTP/1.x".
func parseRequestLine(line []byte) (method, target []byte, err error) {
	parts := bytes.Split(line, []byte(" "))
	if len(parts) != 3 || len(parts[1]) == 0 || !isToken(parts[0]) {
		return nil, nil, errorf(ErrMalformed, "bad request line %q", truncate(line))
	}
	if v := string(parts[2]); v != "HTTP/1.1" && v != "HTTP/1.0" {
		return nil, nil, errorf(ErrMalformed, "unsupported HTTP version %q", truncate(parts[2]))
	}
	return parts[0], parts[1], nil
}

// readHeaders appends header lines through the empty line and extracts the
// framing headers.
func readHeaders(r *bufio.Reader, raw []byte, max int, what string) ([]byte, httpHeaders, error) {
	h := httpHeaders{contentLength: -1}
	for {
		var line []byte
		var err error
		raw, line, err = readLine(r, raw, max, what+" header")
		if err != nil {
			return raw, h, unexpectedEOF(err)
		}
		line = trimEOL(line)
		if len(line) == 0 {
			return raw, h, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			// Also rejects obsolete line folding (leading whitespace).
			return raw, h, errorf(ErrMalformed, "bad %s header line %q", what, truncate(line))
		}
		name, value := line[:colon], bytes.Trim(line[colon+1:], " \t")
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := parseContentLength(value)
			if err != nil {
				return raw, h, err
			}
			if h.contentLength >= 0 && h.contentLength != n {
				return raw, h, errorf(ErrMalformed, "conflicting Content-Length headers")
			}
			h.contentLength = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			h.hasTE = true
			codings := bytes.Split(value, []byte(","))
			last := bytes.Trim(codings[len(codings)-1], " \t")
			h.chunked = bytes.EqualFold(last, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Upgrade")):
			h.upgrade = true
		case bytes.EqualFold(name, []byte("Expect")):
			h.expect100 = bytes.EqualFold(value, []byte("100-continue"))
		case bytes.EqualFold(name, []byte("Connection")):
			// A comma-separated list of options; the header may repeat.
			for _, opt := range bytes.Split(value, []byte(",")) {
				opt = bytes.Trim(opt, " \t")
				h.connClose = h.connClose || bytes.EqualFold(opt, []byte("close"))
				h.connKeepAlive = h.connKeepAlive || bytes.EqualFold(opt, []byte("keep-alive"))
			}
		}
	}
}

// parseContentLength accepts "123" or a list of identical values "123, 123".
func parseContentLength(v []byte) (int64, error) {
	n := int64(-1)
	for _, part := range bytes.Split(v, []byte(",")) {
		part = bytes.Trim(part, " \t")
		if len(part) == 0 || len(part) > 18 {
			return 0, errorf(ErrMalformed, "bad Content-Length %q", truncate(v))
		}
		var m int64
		for _, c := range part {
			if c < '0' || c > '9' {
				return 0, errorf(ErrMalformed, "bad Content-Length %q", truncate(v))
			}
			m = m*10 + int64(c-'0')
		}
		if n >= 0 && m != n {
			return 0, errorf(ErrMalformed, "conflicting Content-Length values %q", truncate(v))
		}
		n = m
	}
	return n, nil
}

// readChunked appends a chunked body including its trailer section.
func readChunked(r *bufio.Reader, raw []byte, max int, what string) ([]byte, error) {
	for {
		var line []byte
		var err error
		raw, line, err = readLine(r, raw, max, what)
		if err != nil {
			return raw, unexpectedEOF(err)
		}
		size, err := parseChunkSize(trimEOL(line))
		if err != nil {
			return raw, err
		}
		if size == 0 {
			// Trailer fields, then the final empty line.
			for {
				raw, line, err = readLine(r, raw, max, what+" trailer")
				if err != nil {
					return raw, unexpectedEOF(err)
				}
				if len(trimEOL(line)) == 0 {
					return raw, nil
				}
			}
		}
		if !fits(len(raw), size, 2, max) {
			return raw, errorf(ErrTooLarge, "%s body exceeds %d bytes", what, max)
		}
		if raw, err = readN(r, raw, int(size)+2); err != nil {
			return raw, unexpectedEOF(err)
		}
		if !bytes.HasSuffix(raw, []byte("\r\n")) {
			return raw, errorf(ErrMalformed, "%s chunk is not followed by CRLF", what)
		}
	}
}

// parseChunkSize parses "1a2b[;ext]".
func parseChunkSize(line []byte) (int64, error) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, errorf(ErrMalformed, "bad chunk size %q", truncate(line))
	}
	n, err := strconv.ParseInt(string(line), 16, 64)
	if err != nil || n < 0 || line[0] == '+' || line[0] == '-' {
		return 0, errorf(ErrMalformed, "bad chunk size %q", truncate(line))
	}
	return n, nil
}

// isToken reports whether b is a non-empty RFC 9110 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), c) >= 0 {
			return false
		}
	}
	return true
}

// ReadResponse implements Framer. Interim 1xx responses (100 Continue) are
// returned together with the final response that follows them. A response
// with neither Content-Length nor chunked coding ends when the app closes the
// connection, as HTTP/1.1 specifies.
func (f *HTTP) ReadResponse(r *bufio.Reader, req Request) ([]byte, error) {
	max := f.lim.MaxResponseBytes
	head := len(req.Op) >= 5 && req.Op[:5] == "HEAD "
	var raw []byte
	for {
		var line []byte
		var err error
		raw, line, err = readLine(r, raw, max, "response status line")
		if err != nil {
			if len(raw) == 0 && err == io.EOF {
				return nil, err
			}
			return raw, unexpectedEOF(err)
		}
		code, err := parseStatusLine(trimEOL(line))
		if err != nil {
			return raw, err
		}
		var h httpHeaders
		raw, h, err = readHeaders(r, raw, max, "response")
		if err != nil {
			return raw, err
		}
		switch {
		case code == 101:
			return raw, errorf(ErrUnsupported, "app switched protocols (101)")
		case code < 200:
			continue // interim response; the final one follows
		case head || code == 204 || code == 304:
			return raw, nil
		case h.chunked:
			return readChunked(r, raw, max, "response")
		case !h.hasTE && h.contentLength >= 0:
			if !fits(len(raw), h.contentLength, 0, max) {
				return raw, errorf(ErrTooLarge, "response body of %d bytes exceeds %d", h.contentLength, max)
			}
			raw, err = readN(r, raw, int(h.contentLength))
			return raw, unexpectedEOF(err)
		default:
			return readUntilEOF(r, raw, max)
		}
	}
}

// EndsHTTPResponseConnection reports whether the app ends its connection
// after resp, the complete response to req as ReadResponse returned it: the
// final response carries "Connection: close", is HTTP/1.0 without
// "keep-alive", is close-delimited, or switches protocols. Requests written
// behind it on the same connection are not run by the app. Bytes that are
// not a response count as ending the connection.
func EndsHTTPResponseConnection(resp []byte, req Request) bool {
	r := bufio.NewReaderSize(bytes.NewReader(resp), 256)
	head := len(req.Op) >= 5 && req.Op[:5] == "HEAD "
	for {
		_, line, err := readLine(r, nil, len(resp), "response status line")
		if err != nil {
			return true
		}
		code, err := parseStatusLine(trimEOL(line))
		if err != nil {
			return true
		}
		_, h, err := readHeaders(r, nil, len(resp), "response")
		switch {
		case err != nil || code == 101:
			return true
		case code < 200:
			continue // interim: the final response follows
		}
		bodyless := head || code == 204 || code == 304
		closeDelimited := !bodyless && !h.chunked && (h.hasTE || h.contentLength < 0) // as ReadResponse reads it
		return closeDelimited || h.endsConn(bytes.HasPrefix(line, []byte("HTTP/1.0 ")))
	}
}

// readUntilEOF appends the rest of the stream (a close-delimited body).
func readUntilEOF(r *bufio.Reader, raw []byte, max int) ([]byte, error) {
	for {
		chunk, err := r.Peek(r.Size())
		if len(raw)+len(chunk) > max {
			return raw, errorf(ErrTooLarge, "response exceeds %d bytes", max)
		}
		raw = append(raw, chunk...)
		_, _ = r.Discard(len(chunk))
		if errors.Is(err, io.EOF) {
			return raw, nil
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return raw, err
		}
	}
}

// parseStatusLine returns the status code of "HTTP/1.x NNN reason".
func parseStatusLine(line []byte) (int, error) {
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' ||
		(len(line) > 12 && line[12] != ' ') {
		return 0, errorf(ErrMalformed, "bad status line %q", truncate(line))
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0, errorf(ErrMalformed, "bad status code in %q", truncate(line))
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return 0, errorf(ErrMalformed, "bad status code %d", code)
	}
	return code, nil
}

// ErrorReply implements Framer. HTTP errors always close the connection:
// after a framing error the stream position is unknown.
func (f *HTTP) ErrorReply(err error) ([]byte, bool) {
	status := "503 Service Unavailable"
	switch {
	case errors.Is(err, ErrTooLarge):
		status = "413 Content Too Large"
	case errors.Is(err, ErrMalformed):
		status = "400 Bad Request"
	case errors.Is(err, ErrUnsupported):
		status = "501 Not Implemented"
	}
	body := "smr-cri: " + oneLine(err.Error()) + "\n"
	return fmt.Appendf(nil, "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, len(body), body), true
}
