package framing

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"

	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// RESP frames the Redis serialization protocol: requests are arrays of bulk
// strings or inline commands (a line of space-separated words), and several
// requests may arrive in one read (pipelining). Responses are RESP2 or RESP3
// values (go-redis v9 negotiates RESP3 with HELLO 3), including nested
// aggregates, nulls and attributes; push messages are rejected because the
// commands that cause them are rejected.
//
// One RESP value per connection: it remembers whether the client is inside
// MULTI, because queued commands are never read-only.
type RESP struct {
	lim     Limits
	allow   rediscmd.Allow
	inMulti bool
}

// NewRESP returns a RESP framer for one connection.
func NewRESP(opts Options) *RESP {
	return &RESP{lim: opts.Limits.withDefaults(), allow: opts.RedisAllow}
}

// Protocol implements Framer.
func (f *RESP) Protocol() string { return ProtoRESP }

// InMulti reports whether the connection is between MULTI and EXEC/DISCARD.
func (f *RESP) InMulti() bool { return f.inMulti }

// argSpan locates one argument inside Request.Raw.
type argSpan struct{ start, end int }

// NextRequest implements Framer. Empty inline lines and "*0" arrays are
// skipped, as Redis does (they get no reply).
func (f *RESP) NextRequest(r *bufio.Reader) (Request, error) {
	for {
		head, err := r.Peek(1)
		if err != nil {
			return Request{}, err // io.EOF between requests is a clean close
		}
		var (
			raw   []byte
			args  [2]argSpan // command name and the first argument (a subcommand)
			nargs int
		)
		if head[0] == '*' {
			raw, nargs, err = f.readMultibulk(r, &args)
		} else {
			raw, nargs, err = f.readInline(r, &args)
		}
		if err != nil {
			return Request{}, err
		}
		if nargs == 0 {
			continue
		}
		return f.classify(raw, args[:min(nargs, len(args))], nargs)
	}
}

// readMultibulk reads "*N\r\n" followed by N "$len\r\n<bytes>\r\n".
func (f *RESP) readMultibulk(r *bufio.Reader, args *[2]argSpan) ([]byte, int, error) {
	max := f.lim.MaxRequestBytes
	raw, line, err := readLine(r, nil, max, "request")
	if err != nil {
		return nil, 0, unexpectedEOF(err)
	}
	n, err := parseRESPInt(line, '*')
	if err != nil {
		return nil, 0, err
	}
	if n <= 0 {
		return raw, 0, nil // Redis ignores *0 and *-1
	}
	if n > int64(f.lim.MaxArgs) {
		return nil, 0, errorf(ErrTooLarge, "request has %d arguments, limit %d", n, f.lim.MaxArgs)
	}
	for i := 0; i < int(n); i++ {
		raw, line, err = readLine(r, raw, max, "request")
		if err != nil {
			return nil, 0, unexpectedEOF(err)
		}
		size, err := parseRESPInt(line, '$')
		if err != nil {
			return nil, 0, err
		}
		if size < 0 {
			return nil, 0, errorf(ErrMalformed, "argument %d has negative length %d", i, size)
		}
		if !fits(len(raw), size, 2, max) {
			return nil, 0, errorf(ErrTooLarge, "request exceeds %d bytes", max)
		}
		start := len(raw)
		raw, err = readN(r, raw, int(size)+2)
		if err != nil {
			return nil, 0, unexpectedEOF(err)
		}
		if !bytes.HasSuffix(raw, []byte("\r\n")) {
			return nil, 0, errorf(ErrMalformed, "argument %d is not terminated by CRLF", i)
		}
		end := len(raw) - 2
		if i < len(args) {
			args[i] = argSpan{start, end}
		}
	}
	return raw, int(n), nil
}

// readInline reads one inline command line ("SET k v\r\n"). Quoting is left
// to the app: smr-cri only needs the command word to classify the request.
func (f *RESP) readInline(r *bufio.Reader, args *[2]argSpan) ([]byte, int, error) {
	raw, line, err := readLine(r, nil, f.lim.MaxRequestBytes, "inline request")
	if err != nil {
		return nil, 0, unexpectedEOF(err)
	}
	body := trimEOL(line)
	n := 0
	i := 0
	for i < len(body) {
		for i < len(body) && (body[i] == ' ' || body[i] == '\t') {
			i++
		}
		if i == len(body) {
			break
		}
		start := i
		for i < len(body) && body[i] != ' ' && body[i] != '\t' {
			i++
		}
		if n < len(args) {
			args[n] = argSpan{start, i}
		}
		n++
	}
	if n > 0 && bytes.ContainsAny(body, "\x00") {
		return nil, 0, errorf(ErrMalformed, "inline request contains a NUL byte")
	}
	return raw, n, nil
}

// parseRESPInt parses a "<prefix><int>\r\n" header line strictly.
func parseRESPInt(line []byte, prefix byte) (int64, error) {
	if len(line) < 4 || line[0] != prefix || !bytes.HasSuffix(line, []byte("\r\n")) {
		return 0, errorf(ErrMalformed, "expected %q header line, got %q", prefix, truncate(line))
	}
	digits := line[1 : len(line)-2]
	n, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil || len(digits) > 1 && digits[0] == '0' {
		return 0, errorf(ErrMalformed, "bad length in %q", truncate(line))
	}
	return n, nil
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// classify looks the command up in the one command table
// (replication/rediscmd), refuses what would make replicas diverge, marks
// requests the origin must rewrite, and decides whether it is read-only.
func (f *RESP) classify(raw []byte, args []argSpan, nargs int) (Request, error) {
	name := bytes.Trim(raw[args[0].start:args[0].end], `"'`)
	var sub []byte
	if len(args) > 1 {
		sub = raw[args[1].start:args[1].end]
	}
	c, _ := rediscmd.Lookup(name, sub)
	req := Request{Raw: raw, Op: c.DisplayName()}
	var all [][]byte // only commands whose treatment depends on arguments read them
	if c.NeedsArgs(nargs) {
		var err error
		if all, err = rediscmd.SplitRequest(raw); err != nil || len(all) == 0 {
			return Request{}, errorf(ErrMalformed, "%s: %v", req.Op, err)
		}
	}
	if err := c.Check(all, f.allow); err != nil {
		return req, refused{err}
	}
	switch c.Name {
	case "MULTI":
		f.inMulti = true
	case "EXEC", "DISCARD", "RESET":
		f.inMulti = false
		return req, nil
	}
	req.ReadOnly = c.Local() && !f.inMulti
	// Only requests the rewrite changes pay for it at the origin (the
	// deadline values differ with the clock, never whether one is made).
	req.Rewrite = c.Treatment == rediscmd.Rewritten && all != nil && c.Rewrite(all, 0) != nil
	return req, nil
}

// refused is a request the command table refuses: its text is
// "<COMMAND>: <why>" and it matches ErrUnsupported.
type refused struct{ err error }

func (r refused) Error() string   { return r.err.Error() }
func (r refused) Unwrap() []error { return []error{ErrUnsupported, r.err} }

// ReadResponse implements Framer: it reads one RESP2/RESP3 value, counting
// the elements still owed by open aggregates instead of recursing, so deep
// nesting costs no stack.
func (f *RESP) ReadResponse(r *bufio.Reader, _ Request) ([]byte, error) {
	max := f.lim.MaxResponseBytes
	var raw, line []byte
	var err error
	for need := int64(1); need > 0; need-- {
		raw, line, err = readLine(r, raw, max, "response")
		if err != nil {
			if len(raw) == 0 && err == io.EOF {
				return nil, err
			}
			return nil, unexpectedEOF(err)
		}
		if len(line) < 3 || !bytes.HasSuffix(line, []byte("\r\n")) {
			return nil, errorf(ErrMalformed, "response line %q is not CRLF terminated", truncate(line))
		}
		switch line[0] {
		case '+', '-', ':', '_', ',', '#', '(':
			// single-line value
		case '$', '!', '=':
			n, err := parseRESPInt(line, line[0])
			if err != nil {
				return nil, err
			}
			if n < 0 {
				if n == -1 && line[0] == '$' {
					continue // RESP2 null bulk string
				}
				return nil, errorf(ErrMalformed, "negative length in %q", truncate(line))
			}
			if !fits(len(raw), n, 2, max) {
				return nil, errorf(ErrTooLarge, "response exceeds %d bytes", max)
			}
			if raw, err = readN(r, raw, int(n)+2); err != nil {
				return nil, unexpectedEOF(err)
			}
			if !bytes.HasSuffix(raw, []byte("\r\n")) {
				return nil, errorf(ErrMalformed, "bulk reply is not CRLF terminated")
			}
		case '*', '~', '%', '|':
			n, err := parseRESPInt(line, line[0])
			if err != nil {
				return nil, err
			}
			if n < 0 {
				if n == -1 && line[0] == '*' {
					continue // RESP2 null array
				}
				return nil, errorf(ErrMalformed, "negative count in %q", truncate(line))
			}
			// Every element takes at least 3 bytes, so a count larger than the
			// remaining budget can never complete.
			if !fits(0, n, 0, max) || !fits(0, 2*n, need+1, max) {
				return nil, errorf(ErrTooLarge, "response aggregate of %d elements exceeds %d bytes", n, max)
			}
			switch line[0] {
			case '%':
				need += 2 * n
			case '|':
				need += 2*n + 1 // attributes precede the value they annotate
			default:
				need += n
			}
		case '>':
			return nil, errorf(ErrUnsupported, "RESP3 push message from the app (pub/sub or client tracking)")
		default:
			return nil, errorf(ErrMalformed, "unknown RESP type byte %q", line[0])
		}
	}
	return raw, nil
}

// ErrorReply implements Framer.
func (f *RESP) ErrorReply(err error) ([]byte, bool) {
	reply := []byte("-ERR smr-cri: " + oneLine(err.Error()) + "\r\n")
	return reply, errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLarge)
}
