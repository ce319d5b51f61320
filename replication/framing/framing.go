// Package framing finds where client requests and application responses end
// in a byte stream, for the protocols smr-cri replicates (RESP and HTTP/1.1).
//
// A Framer is pure: it reads from a bufio.Reader, allocates only the bytes it
// returns, starts no goroutines and does no I/O of its own. One Framer serves
// one client connection (RESP tracks MULTI state per connection), and the
// executor keeps one per replicated session to read the app's responses.
//
// The bytes of a request are forwarded verbatim (Request.Raw): the framer
// never rewrites what the client sent, so the app sees exactly the stream it
// would see without replication, cut at request boundaries.
package framing

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/smr-io/smr-cri/replication/rediscmd"
)

// Errors returned by framers. They are wrapped with detail; test with errors.Is.
var (
	// ErrMalformed: the bytes do not follow the protocol. The stream position
	// is undefined afterwards, so the connection must be closed.
	ErrMalformed = errors.New("malformed request")
	// ErrTooLarge: a request or response exceeds a configured limit.
	ErrTooLarge = errors.New("too large")
	// ErrUnsupported: a well-formed request that smr-cri cannot replicate
	// (e.g. SUBSCRIBE, MONITOR, blocking pops, HTTP upgrades). For RESP the
	// request has been consumed completely and the connection may continue.
	ErrUnsupported = errors.New("unsupported request")
	// ErrUnavailable marks failures of the replication layer (no quorum,
	// app not ready). Framers never return it; ErrorReply maps it.
	ErrUnavailable = errors.New("replication unavailable")
)

// Request is one complete client request.
type Request struct {
	// Raw is the request exactly as the client sent it.
	Raw []byte
	// Op names the request for traces and routing: the upper-cased Redis
	// command ("SET") or the HTTP method and path ("POST /kv/a").
	Op string
	// ReadOnly is true when the request cannot change application state or
	// connection state, so it may run locally after a ReadIndex.
	ReadOnly bool
	// Rewrite is true when the origin must rewrite Raw into a deterministic
	// equivalent stamped with its clock before proposing (rediscmd.Rewrite).
	Rewrite bool
}

// Framer frames one connection's requests and the matching responses.
type Framer interface {
	// Protocol returns "resp" or "http".
	Protocol() string
	// NextRequest reads exactly one complete request. io.EOF means the client
	// closed cleanly between requests.
	NextRequest(r *bufio.Reader) (Request, error)
	// ReadResponse reads exactly one complete response to req.
	ReadResponse(r *bufio.Reader, req Request) ([]byte, error)
	// ErrorReply renders err as a protocol-correct reply to the client and
	// says whether the connection must be closed after sending it.
	ErrorReply(err error) (reply []byte, closeConn bool)
}

// Limits bound what a framer accepts. Zero fields take the defaults.
type Limits struct {
	// MaxRequestBytes bounds one request (headers and body). Default 1 MiB.
	MaxRequestBytes int
	// MaxResponseBytes bounds one response. Default 64 MiB.
	MaxResponseBytes int
	// MaxArgs bounds the element count of a RESP request array. Default 65536.
	MaxArgs int
}

// Defaults for Limits.
const (
	DefaultMaxRequestBytes  = 1 << 20
	DefaultMaxResponseBytes = 64 << 20
	DefaultMaxArgs          = 1 << 16
)

func (l Limits) withDefaults() Limits {
	if l.MaxRequestBytes <= 0 {
		l.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if l.MaxResponseBytes <= 0 {
		l.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if l.MaxArgs <= 0 {
		l.MaxArgs = DefaultMaxArgs
	}
	return l
}

// Options configure a framer.
type Options struct {
	Limits Limits
	// HTTPGetReadOnly declares that the app's GET and HEAD handlers have no
	// side effects (pod annotation smr.io/http-get-readonly), so they may be
	// served locally after a ReadIndex. Without it every HTTP request is
	// ordered through the log.
	HTTPGetReadOnly bool
	// OnExpectContinue, if set, is called by the HTTP framer when a request
	// carries "Expect: 100-continue" and its body is about to be read: the
	// caller answers "100 Continue" so the client sends the body (the framer
	// itself never writes). Clients accept further 1xx from the app.
	OnExpectContinue func()
	// RedisAllow is what the pod opted in to (smr.io/redis-allow): scripts,
	// key expiry. Without it those Redis commands are refused.
	RedisAllow rediscmd.Allow
}

// Protocol names accepted by New.
const (
	ProtoRESP = "resp"
	ProtoHTTP = "http"
)

// New returns a fresh framer for one connection of the given protocol.
func New(protocol string, opts Options) (Framer, error) {
	switch protocol {
	case ProtoRESP:
		return NewRESP(opts), nil
	case ProtoHTTP:
		return NewHTTP(opts), nil
	}
	return nil, fmt.Errorf("framing: unknown protocol %q (want %q or %q)", protocol, ProtoRESP, ProtoHTTP)
}

// IsRequestError says whether err from NextRequest refused the client's
// request (malformed, too large, unsupported) rather than ending the
// stream: the client gets ErrorReply's answer.
func IsRequestError(err error) bool {
	return errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUnsupported)
}

// errorf wraps a sentinel with detail.
func errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}

// oneLine makes an error text safe to embed in a single protocol line.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r < 0x20 {
			return ' '
		}
		return r
	}, s)
	if len(s) > 400 {
		s = s[:400]
	}
	return s
}

// readLine appends one line (through '\n') to dst, failing with ErrTooLarge if
// dst would exceed max bytes. It returns the extended dst and the line itself
// (a sub-slice of dst, including the terminator).
func readLine(r *bufio.Reader, dst []byte, max int, what string) ([]byte, []byte, error) {
	start := len(dst)
	for {
		frag, err := r.ReadSlice('\n')
		if len(dst)+len(frag) > max {
			return dst, nil, errorf(ErrTooLarge, "%s exceeds %d bytes", what, max)
		}
		dst = append(dst, frag...)
		switch {
		case err == nil:
			return dst, dst[start:], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return dst, nil, err
		}
	}
}

// fits reports whether n more bytes plus extra (framing bytes such as a
// CRLF) fit into a frame that already holds used bytes, without exceeding max.
// It never overflows: lengths come from the peer and may be anything an int64
// holds (a RESP bulk length near 2^63 once wrapped the sum negative and
// passed the check).
func fits(used int, n, extra int64, max int) bool {
	room := int64(max) - int64(used) - extra
	return n >= 0 && room >= 0 && n <= room
}

// readN appends exactly n bytes from r to dst. Callers bound n with fits; a
// negative n is a caller bug reported as malformed input, never a panic.
func readN(r *bufio.Reader, dst []byte, n int) ([]byte, error) {
	if n < 0 {
		return dst, errorf(ErrMalformed, "negative length %d", n)
	}
	for n > 0 {
		chunk, err := r.Peek(min(n, r.Size()))
		if len(chunk) > 0 {
			dst = append(dst, chunk...)
			_, _ = r.Discard(len(chunk))
			n -= len(chunk)
		}
		if err != nil && n > 0 {
			return dst, err
		}
	}
	return dst, nil
}

// trimEOL removes a trailing "\r\n" or "\n".
func trimEOL(line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
	}
	return line
}

// unexpectedEOF turns a bare io.EOF inside a frame into io.ErrUnexpectedEOF.
func unexpectedEOF(err error) error {
	if err == io.EOF {
		return fmt.Errorf("connection closed inside a frame: %w", io.ErrUnexpectedEOF)
	}
	return err
}
