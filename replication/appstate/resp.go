package appstate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"
	"time"
)

// respConn is a minimal RESP2 client for the management connection to the
// app: commands are pipelined (send many, then read as many replies), and
// replies are parsed into a value tree. It never says HELLO or CLIENT
// SETINFO, so it works on any Redis from 2.8 on and leaves nothing in the
// app's state but a connection.
type respConn struct {
	c       net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration
	pending int
}

// value is one RESP2 reply.
type value struct {
	kind byte // '+', '-', ':', '$', '*'
	str  []byte
	num  int64
	arr  []value
	null bool
}

func (v value) err() error {
	if v.kind == '-' {
		return &AppError{Msg: string(v.str)}
	}
	return nil
}

// AppError is an error reply of the app.
type AppError struct{ Msg string }

func (e *AppError) Error() string { return "app replied: " + e.Msg }

// maxReplyBytes bounds one bulk string and maxReplyElems one array of a
// reply: garbage from the app must give an error, never a huge allocation.
const (
	maxReplyBytes = 1 << 30
	maxReplyElems = 1 << 24
)

func dialRESP(ctx context.Context, cfg Config) (*respConn, error) {
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	c, err := cfg.Dialer.DialApp(dctx, cfg.Port)
	if err != nil {
		return nil, fmt.Errorf("dial app port %d: %w", cfg.Port, err)
	}
	rc := &respConn{c: c, r: bufio.NewReaderSize(c, 64<<10), w: bufio.NewWriterSize(c, 64<<10), timeout: cfg.Timeout}
	if cfg.Credentials.Password != "" {
		args := []string{"AUTH", cfg.Credentials.Password}
		if cfg.Credentials.Username != "" {
			args = []string{"AUTH", cfg.Credentials.Username, cfg.Credentials.Password}
		}
		v, err := rc.do(ctx, args...)
		if err == nil {
			err = v.err()
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("authenticate to the app (credentials from %s): %w", cfg.Credentials.source(), err)
		}
	}
	return rc, nil
}

func (rc *respConn) Close() error { return rc.c.Close() }

// idleAlive says, without a round trip and without blocking, whether an
// idle connection is still open and in step: the app has not closed it
// (no EOF or reset pending) and sent nothing unasked. A connection that
// cannot be peeked at (no file descriptor) counts as alive: its next round
// trip finds out.
func (rc *respConn) idleAlive() bool {
	if rc.pending > 0 || rc.r.Buffered() > 0 {
		return false
	}
	sc, ok := rc.c.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	alive := true
	var b [1]byte
	err = raw.Read(func(fd uintptr) bool {
		// EAGAIN: open and nothing to read. No error: the peer closed it
		// (0 bytes) or sent unasked bytes; another error: reset.
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = errors.Is(rerr, syscall.EAGAIN)
		return true // never wait for readiness
	})
	return alive && err == nil
}

// deadline applies the per-call timeout, shortened by ctx's deadline.
func (rc *respConn) deadline(ctx context.Context) {
	d := time.Now().Add(rc.timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	_ = rc.c.SetDeadline(d)
}

// send queues one command; flush writes every queued command.
func (rc *respConn) send(args ...[]byte) {
	rc.w.WriteByte('*')
	rc.w.WriteString(strconv.Itoa(len(args)))
	rc.w.WriteString("\r\n")
	for _, a := range args {
		rc.w.WriteByte('$')
		rc.w.WriteString(strconv.Itoa(len(a)))
		rc.w.WriteString("\r\n")
		rc.w.Write(a)
		rc.w.WriteString("\r\n")
	}
	rc.pending++
}

func (rc *respConn) sendStr(args ...string) {
	b := make([][]byte, len(args))
	for i, a := range args {
		b[i] = []byte(a)
	}
	rc.send(b...)
}

// exec flushes the queued commands and reads one reply per command, in
// order. Error replies are values (v.err()), not a failed exec.
func (rc *respConn) exec(ctx context.Context) ([]value, error) {
	n := rc.pending
	rc.pending = 0
	rc.deadline(ctx)
	if err := rc.w.Flush(); err != nil {
		return nil, fmt.Errorf("write to app: %w", err)
	}
	out := make([]value, n)
	for i := range out {
		v, err := readValue(rc.r, 0)
		if err != nil {
			return nil, fmt.Errorf("read app reply: %w", err)
		}
		out[i] = v
	}
	return out, nil
}

// do runs one command.
func (rc *respConn) do(ctx context.Context, args ...string) (value, error) {
	rc.sendStr(args...)
	vs, err := rc.exec(ctx)
	if err != nil {
		return value{}, err
	}
	return vs[0], nil
}

// doOK runs one command and turns an error reply into an error.
func (rc *respConn) doOK(ctx context.Context, args ...string) (value, error) {
	v, err := rc.do(ctx, args...)
	if err == nil {
		err = v.err()
	}
	if err != nil {
		return value{}, fmt.Errorf("%s: %w", args[0], err)
	}
	return v, nil
}

var errBadReply = errors.New("malformed RESP reply")

func readValue(r *bufio.Reader, depth int) (value, error) {
	if depth > 64 {
		return value{}, fmt.Errorf("%w: nested too deep", errBadReply)
	}
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return value{}, fmt.Errorf("%w: line too long", errBadReply)
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return value{}, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return value{}, fmt.Errorf("%w: %q", errBadReply, line)
	}
	kind, body := line[0], line[1:len(line)-2]
	switch kind {
	case '+', '-':
		return value{kind: kind, str: append([]byte(nil), body...)}, nil
	case ':':
		n, err := strconv.ParseInt(string(body), 10, 64)
		if err != nil {
			return value{}, fmt.Errorf("%w: integer %q", errBadReply, body)
		}
		return value{kind: kind, num: n}, nil
	case '$':
		n, err := strconv.ParseInt(string(body), 10, 64)
		switch {
		case err != nil || n < -1 || n > maxReplyBytes:
			return value{}, fmt.Errorf("%w: bulk length %q", errBadReply, body)
		case n == -1:
			return value{kind: kind, null: true}, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return value{}, fmt.Errorf("read bulk string: %w", err)
		}
		return value{kind: kind, str: buf[:n]}, nil
	case '*':
		n, err := strconv.ParseInt(string(body), 10, 64)
		switch {
		case err != nil || n < -1 || n > maxReplyElems:
			return value{}, fmt.Errorf("%w: array length %q", errBadReply, body)
		case n == -1:
			return value{kind: kind, null: true}, nil
		}
		arr := make([]value, 0, min(n, 1024))
		for range n {
			v, err := readValue(r, depth+1)
			if err != nil {
				return value{}, err
			}
			arr = append(arr, v)
		}
		return value{kind: kind, arr: arr}, nil
	}
	return value{}, fmt.Errorf("%w: type %q", errBadReply, kind)
}
