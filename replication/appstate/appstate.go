package appstate

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Dialer opens a connection to the unmodified app on this replica;
// replication.AppDialer (and so its TCPDialer and NetnsDialer) satisfies it.
type Dialer interface {
	DialApp(ctx context.Context, port int) (net.Conn, error)
}

// Protocols (the same names as replication/framing's).
const (
	ProtoRESP = "resp"
	ProtoHTTP = "http"
)

// Credentials authenticate smr-cri's own management connection to the app
// (Redis AUTH; HTTP basic auth on the snapshot path). They come from the
// Secret named by the pod contract, never from the log.
type Credentials struct {
	Username, Password string
	// Source names where they came from (e.g. "Secret default/redis-auth"),
	// for error messages; never the secret itself.
	Source string
}

func (c Credentials) source() string {
	if c.Source == "" {
		return "the pod contract"
	}
	return c.Source
}

// Config names one replica's app and how to reach it.
type Config struct {
	Dialer   Dialer
	Port     int
	Protocol string // ProtoRESP or ProtoHTTP
	// SnapshotPath is the HTTP app's state endpoint (pod contract
	// smr.io/snapshot-path): GET answers the state, PUT installs it.
	// Required for ProtoHTTP; an HTTP app without it has no snapshots.
	SnapshotPath string
	Credentials  Credentials
	// Timeout bounds one app round trip (default 60s); DialTimeout one dial
	// (default 5s).
	Timeout, DialTimeout time.Duration
}

// App is one replica's app, reached through its own protocol. Capture and
// Restore must run while nothing else changes the app (replication's
// executor calls them between two applied log entries).
type App interface {
	// Capture writes the whole state as a stream to w, chunk by chunk.
	Capture(ctx context.Context, w io.Writer) (Stats, error)
	// Restore replaces the whole state by the one read from r (written by
	// Capture of an app of the same protocol). A damaged stream is refused
	// with ErrBadStream; for Redis, keys restored before the damage was
	// found stay (restore again from a good snapshot).
	Restore(ctx context.Context, r io.Reader) (Stats, error)
	// Digest is a canonical hash of the state: equal for equal states
	// whatever the insertion order or the app's internal encoding.
	Digest(ctx context.Context, opt DigestOptions) (Digest, error)
}

// DigestOptions tune one Digest.
type DigestOptions struct {
	// ExpiringBy, if set, leaves out every key whose absolute expiry is at
	// or before it. Replicas digest at slightly different times on clocks
	// that differ: a key that expires in between is gone on one and there
	// on the other although both states are equal. With one cut-off for
	// all (the audit's), such keys are left out everywhere alike, while a
	// key expiring later must be there on every replica that digests
	// before the cut-off (by its own clock, which is the one its Redis
	// expires keys by).
	ExpiringBy time.Time
	// MaxKeys (Redis) and MaxBytes (HTTP state bodies) bound the work: a
	// larger app is refused with ErrTooLarge before it is read (Redis) or
	// as soon as the body passes the bound (HTTP). 0: no bound.
	MaxKeys  int
	MaxBytes int64
}

// ErrTooLarge: the app is larger than DigestOptions allow.
var ErrTooLarge = errors.New("appstate: the app's state is larger than the digest bound")

// Stats describe one capture or restore.
type Stats struct {
	Keys      int   // Redis keys (HTTP: 0)
	Databases int   // non-empty Redis databases
	Functions bool  // a Redis function library payload was included
	Bytes     int64 // stream bytes
}

// Digest is a canonical state hash.
type Digest struct {
	Sum  [32]byte
	Keys int // Redis keys covered (HTTP: 0)
}

func (d Digest) String() string {
	return fmt.Sprintf("sha256:%s keys=%d", hex.EncodeToString(d.Sum[:]), d.Keys)
}

// ErrNoSnapshot: the app has no way to be snapshotted (an HTTP app without
// smr.io/snapshot-path).
var ErrNoSnapshot = errors.New("appstate: this app has no snapshot contract")

// New returns the App handle for cfg.
func New(cfg Config) (App, error) {
	if cfg.Dialer == nil || cfg.Port <= 0 || cfg.Port > 65535 {
		return nil, errors.New("appstate: Config needs a Dialer and a port")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	switch cfg.Protocol {
	case ProtoRESP:
		return &redisApp{cfg: cfg}, nil
	case ProtoHTTP:
		if cfg.SnapshotPath == "" {
			return nil, fmt.Errorf("%w: HTTP app on port %d has no snapshot path", ErrNoSnapshot, cfg.Port)
		}
		if err := ValidateSnapshotPath(cfg.SnapshotPath); err != nil {
			return nil, err
		}
		return newHTTPApp(cfg), nil
	}
	return nil, fmt.Errorf("appstate: unknown protocol %q", cfg.Protocol)
}

// ValidateSnapshotPath checks an HTTP snapshot path: absolute, without
// query, fragment, spaces or control characters, and not "/" (the whole app
// would be hidden from clients).
func ValidateSnapshotPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/") || p == "/":
		return fmt.Errorf("appstate: snapshot path %q must be an absolute path other than /", p)
	case strings.ContainsAny(p, "?# \t"):
		return fmt.Errorf("appstate: snapshot path %q must not contain '?', '#' or spaces", p)
	case len(p) > 256:
		return fmt.Errorf("appstate: snapshot path longer than 256 bytes")
	}
	for _, c := range p {
		if c < 0x21 || c == 0x7f {
			return fmt.Errorf("appstate: snapshot path %q contains a control character", p)
		}
	}
	return nil
}

// countingWriter counts bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
