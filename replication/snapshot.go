package replication

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/appstate"
	"github.com/smr-io/smr-cri/replication/connstate"
)

// SnapshotConfig turns on app snapshots for an executor.
type SnapshotConfig struct {
	// SnapshotPath is the HTTP ports' state endpoint (smr.io/snapshot-path).
	SnapshotPath string
	Credentials  appstate.Credentials
	// Timeout bounds one capture or restore of one port's app (default 10m).
	Timeout time.Duration
}

// appSnapshots holds one appstate.App per replicated port.
type appSnapshots struct {
	apps    []appstate.App
	timeout time.Duration
}

var _ raftcore.StreamSnapshotter = (*Executor)(nil)

// EnableSnapshots makes the executor a raftcore.StreamSnapshotter: the
// group's log can then be compacted and lagging members receive the app's
// state. Without it (an HTTP app without the snapshot contract) the group
// keeps its whole log. Call it before the group starts.
func (x *Executor) EnableSnapshots(cfg SnapshotConfig) error {
	s := &appSnapshots{timeout: cfg.Timeout}
	if s.timeout <= 0 {
		s.timeout = 10 * time.Minute
	}
	for _, p := range x.cfg.Ports {
		a, err := appstate.New(appstate.Config{Dialer: x.cfg.Dialer, Port: p.Number, Protocol: p.Protocol,
			SnapshotPath: cfg.SnapshotPath, Credentials: cfg.Credentials, DialTimeout: x.cfg.DialTimeout})
		if err != nil {
			return fmt.Errorf("group %s port %d: %w", x.cfg.Group, p.Number, err)
		}
		s.apps = append(s.apps, a)
	}
	x.mu.Lock()
	x.snap, x.creds = s, cfg.Credentials
	x.mu.Unlock()
	return nil
}

// Apps returns the app handles of the replicated ports (nil without
// EnableSnapshots), e.g. for a state digest.
func (x *Executor) Apps() []appstate.App {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.snap == nil {
		return nil
	}
	return slices.Clone(x.snap.apps)
}

// errNoSnapshots: the executor has no snapshot contract.
var errNoSnapshots = errors.New("replication: this group's app has no snapshot contract")

// The executor's snapshot: the sessions open at the snapshot position with
// their connection state (connstate's encoding: Redis SELECT, HELLO 3,
// CLIENT SETNAME, an open MULTI and its queue ...; never a password), then
// each port's app state (appstate stream) cut into chunks.
//
//	snapshot   := "SMREXEC2" uvarint(len) connstate-tracker port-state*len(Ports)
//	port-state := (uvarint(len) bytes)* uvarint(0)
//
// A replica restored from it opens a new app connection for each session
// and replays its state there (sessions.go); a session whose state cannot
// be replayed (WATCH, AUTH) is ended on every replica by an END entry.
// Snapshots of the previous format, "SMREXEC1", carry sessions by identity
// only:
//
//	"SMREXEC1" uvarint(n) session*n port-state*len(Ports)
//	session := uvarint(id) uvarint(origin) uvarint(port) uvarint(len) protocol
//
// they are still read; their RESP sessions' state is unknown, so those are
// ended like any session that cannot be rebuilt.
const (
	execSnapMagic   = "SMREXEC2"
	execSnapMagicV1 = "SMREXEC1"
)

// SnapshotTo implements raftcore.StreamSnapshotter. It runs between two
// applied entries (raftcore calls it from the apply goroutine) and under the
// serial executor's lock, so nothing of the group reaches the app meanwhile.
func (x *Executor) SnapshotTo(index uint64, w io.Writer) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.snap == nil {
		return errNoSnapshots
	}
	if x.broken != nil || len(x.queue) > 0 {
		return fmt.Errorf("%w: the app is behind the log; no snapshot until it caught up", ErrNotReady)
	}
	// A fenced app's state is uncertain (a broken session's request may or
	// may not have run in it): a snapshot of it would be the very state the
	// repair restores, keeping the fault (e2e slow-replica: a snapshot taken
	// while the old pod stopped made the rebuilt replica diverge).
	if x.fenced.Load() || x.restoring.Load() {
		return fmt.Errorf("%w: the app's state is uncertain until its repair; no snapshot of it", ErrNotReady)
	}
	t0 := time.Now()
	bw := bufio.NewWriterSize(w, 64<<10)
	x.cmu.Lock()
	conns, err := x.conns.MarshalBinary()
	nsessions := x.conns.Len()
	x.cmu.Unlock()
	if err != nil {
		return fmt.Errorf("group %s: encode the sessions' connection state: %w", x.cfg.Group, err)
	}
	b := binary.AppendUvarint([]byte(execSnapMagic), uint64(len(conns)))
	if _, err := bw.Write(append(b, conns...)); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	var total int64
	for i, a := range x.snap.apps {
		// An app that is down fails this snapshot at once (raftcore takes
		// the next one later) rather than holding the apply loop.
		ctx, cancel := context.WithTimeout(context.Background(), x.snap.timeout)
		cw := &chunkWriter{w: bw}
		st, err := a.Capture(ctx, cw)
		cancel()
		if err == nil {
			err = cw.close()
		}
		if err != nil {
			return fmt.Errorf("group %s: capture the app on port %d: %w", x.cfg.Group, x.cfg.Ports[i].Number, err)
		}
		total += st.Bytes
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	x.cfg.Trace.Write(TraceLine{Kind: "snapshot", Group: x.cfg.Group, Index: index, Origin: x.cfg.Self,
		Op: fmt.Sprintf("CAPTURE bytes=%d sessions=%d", total, nsessions), Latency: time.Since(t0), Exec: time.Since(t0)})
	return nil
}

// RestoreFrom implements raftcore.StreamSnapshotter: every app session is
// closed, each port's app is replaced by the snapshot's state, and the
// sessions open at the snapshot position are opened again with their
// connection state replayed, or ended on every replica when it cannot be
// (see execSnapMagic and sessions.go).
func (x *Executor) RestoreFrom(index uint64, r io.Reader) error {
	if x.snap == nil {
		return errNoSnapshots
	}
	// At a member's start the app container may not run yet: the pod is
	// attached when its sandbox starts and kubelet creates the container
	// after that. Wait for every app before taking mu (the stream cannot be
	// read twice), so the CreateContainer that fences this executor never
	// waits behind this restore; only Close ends the wait.
	for _, p := range x.cfg.Ports {
		if err := x.waitAppUp(p.Number); err != nil {
			return fmt.Errorf("group %s: restore the app on port %d: %w", x.cfg.Group, p.Number, err)
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	t0 := time.Now()
	br := bufio.NewReaderSize(r, 64<<10)
	conns, err := readSnapshotSessions(br, x.cfg.Ports)
	if err != nil {
		return err
	}
	x.closeAllConnsLocked()
	var total int64
	for i, a := range x.snap.apps {
		ctx, cancel := context.WithTimeout(context.Background(), x.snap.timeout)
		cr := &chunkReader{r: br}
		st, err := a.Restore(ctx, cr)
		cancel()
		if err == nil {
			err = cr.drain()
		}
		if err != nil {
			return fmt.Errorf("group %s: restore the app on port %d: %w", x.cfg.Group, x.cfg.Ports[i].Number, err)
		}
		total += st.Bytes
	}
	// The tracker is the snapshot's from here on (the next entries are
	// fed to it in order); every session gets its connection rebuilt.
	x.cmu.Lock()
	x.conns, x.connsFloor, x.ending = conns, index, map[uint64]bool{}
	x.cmu.Unlock()
	reopened := x.reopenAllLocked(index)
	x.setApplied(index)
	x.cfg.Trace.Write(TraceLine{Kind: "restore", Group: x.cfg.Group, Index: index, Origin: x.cfg.Self,
		Op: fmt.Sprintf("RESTORE bytes=%d sessions=%d", total, reopened), Latency: time.Since(t0), Exec: time.Since(t0)})
	return nil
}

// readSnapshotSessions reads the sessions part of an executor snapshot of
// either format (see execSnapMagic).
func readSnapshotSessions(br *bufio.Reader, ports []Port) (*connstate.Tracker, error) {
	magic := make([]byte, len(execSnapMagic))
	if _, err := io.ReadFull(br, magic); err != nil {
		return nil, fmt.Errorf("%w: not an executor snapshot", appstate.ErrBadStream)
	}
	switch string(magic) {
	case execSnapMagic:
		n, err := binary.ReadUvarint(br)
		if err != nil || n > maxSnapSessionBytes {
			return nil, fmt.Errorf("%w: sessions length", appstate.ErrBadStream)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, fmt.Errorf("%w: sessions: %w", appstate.ErrBadStream, err)
		}
		t, err := connstate.Unmarshal(b)
		if err != nil {
			return nil, fmt.Errorf("%w: sessions: %w", appstate.ErrBadStream, err)
		}
		return t, nil
	case execSnapMagicV1:
		return readSnapshotSessionsV1(br, ports)
	}
	return nil, fmt.Errorf("%w: not an executor snapshot", appstate.ErrBadStream)
}

// maxSnapSessionBytes bounds the sessions part of a snapshot (every session
// of a group, open transactions included).
const maxSnapSessionBytes = 1 << 30

// readSnapshotSessionsV1 reads the session records of an SMREXEC1 snapshot.
func readSnapshotSessionsV1(br *bufio.Reader, ports []Port) (*connstate.Tracker, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil || n > 1<<24 {
		return nil, fmt.Errorf("%w: session count", appstate.ErrBadStream)
	}
	t := connstate.New()
	for range n {
		var id, origin, port, plen uint64
		for _, p := range []*uint64{&id, &origin, &port, &plen} {
			if *p, err = binary.ReadUvarint(br); err != nil {
				return nil, fmt.Errorf("%w: session record", appstate.ErrBadStream)
			}
		}
		if port > 65535 || plen > 16 {
			return nil, fmt.Errorf("%w: session record", appstate.ErrBadStream)
		}
		proto := make([]byte, plen)
		if _, err := io.ReadFull(br, proto); err != nil {
			return nil, fmt.Errorf("%w: session record", appstate.ErrBadStream)
		}
		if slices.Contains(ports, Port{Number: int(port), Protocol: string(proto)}) {
			t.OpenUnknown(id, origin, int(port), string(proto),
				"it was carried by a snapshot of an older smr-cri, which kept no connection state")
		}
	}
	return t, nil
}

// chunkWriter frames an app's state stream so several follow each other:
// each Write is one length-prefixed chunk, close writes the 0 terminator.
type chunkWriter struct {
	w   io.Writer
	hdr [binary.MaxVarintLen64]byte
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if _, err := c.w.Write(c.hdr[:binary.PutUvarint(c.hdr[:], uint64(len(p)))]); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

func (c *chunkWriter) close() error {
	_, err := c.w.Write([]byte{0})
	return err
}

// chunkReader reads one chunked stream up to its terminator.
type chunkReader struct {
	r    *bufio.Reader
	left uint64
	done bool
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for c.left == 0 {
		if c.done {
			return 0, io.EOF
		}
		n, err := binary.ReadUvarint(c.r)
		if err != nil {
			return 0, fmt.Errorf("%w: chunk header", appstate.ErrBadStream)
		}
		if n == 0 {
			c.done = true
			return 0, io.EOF
		}
		c.left = n
	}
	if uint64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= uint64(n)
	if err == io.EOF {
		err = fmt.Errorf("%w: truncated chunk", appstate.ErrBadStream)
	}
	return n, err
}

// drain skips what the app's reader left of its stream (nothing, for a
// whole stream), so the next port's stream starts at its first chunk.
func (c *chunkReader) drain() error {
	_, err := io.Copy(io.Discard, c)
	return err
}

// appWaitLog is how often a wait for an app that does not come up says so.
const appWaitLog = 30 * time.Second

// waitAppUp dials the app on port until it answers or the executor closes
// (a wait that lasts is logged every appWaitLog).
func (x *Executor) waitAppUp(port int) error {
	start := time.Now()
	lastLog := start
	for {
		ctx, cancel := context.WithTimeout(context.Background(), x.cfg.DialTimeout)
		conn, err := x.cfg.Dialer.DialApp(ctx, port)
		cancel()
		if err == nil {
			return conn.Close()
		}
		if time.Since(lastLog) >= appWaitLog {
			lastLog = time.Now()
			x.cfg.Log.Warn("waiting for the app to accept connections before restoring a snapshot into it",
				"group", x.cfg.Group, "port", port, "waited", time.Since(start).Round(time.Second).String(), "err", err)
		}
		select {
		case <-x.closed:
			return fmt.Errorf("%w: executor closed while waiting for the app: %w", raftcore.ErrStopped, err)
		case <-time.After(x.cfg.RetryInterval):
		}
	}
}
