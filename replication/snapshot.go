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
	x.snap = s
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

// The executor's snapshot: the sessions open at the snapshot position, then
// each port's app state (appstate stream) cut into chunks.
//
//	snapshot := magic(8) uvarint(n) session*n port-state*len(Ports)
//	session  := uvarint(id) uvarint(origin) uvarint(port) uvarint(len) protocol
//	port-state := (uvarint(len) bytes)* uvarint(0)
//
// Sessions open at the snapshot position are carried by identity only: a
// replica restored from the snapshot opens a fresh app connection for each.
// Their connection state (Redis SELECT, an open MULTI, WATCH, CLIENT
// SETNAME; an HTTP request half sent is impossible, entries are whole) is
// not carried, so a client that changed it before the snapshot position and
// keeps using its connection sees the restored replica differ; replicas
// that applied the log themselves keep it. This is the same limit as a
// restart of the node daemon (CONTRACT.md).
const execSnapMagic = "SMREXEC1"

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
	b := []byte(execSnapMagic)
	x.smu.RLock()
	ids := make([]uint64, 0, len(x.sessions))
	for id := range x.sessions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		s := x.sessions[id]
		b = binary.AppendUvarint(b, id)
		b = binary.AppendUvarint(b, s.origin)
		b = binary.AppendUvarint(b, uint64(s.port))
		b = binary.AppendUvarint(b, uint64(len(s.framer.Protocol())))
		b = append(b, s.framer.Protocol()...)
	}
	x.smu.RUnlock()
	if _, err := bw.Write(b); err != nil {
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
		Op: fmt.Sprintf("CAPTURE bytes=%d sessions=%d", total, len(ids)), Latency: time.Since(t0), Exec: time.Since(t0)})
	return nil
}

// RestoreFrom implements raftcore.StreamSnapshotter: every app session is
// closed, each port's app is replaced by the snapshot's state, and the
// sessions open at the snapshot position are opened again (fresh app
// connections; see execSnapMagic for what that loses).
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
	magic := make([]byte, len(execSnapMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != execSnapMagic {
		return fmt.Errorf("%w: not an executor snapshot", appstate.ErrBadStream)
	}
	n, err := binary.ReadUvarint(br)
	if err != nil || n > 1<<24 {
		return fmt.Errorf("%w: session count", appstate.ErrBadStream)
	}
	type openSession struct {
		id, origin uint64
		port       Port
	}
	opens := make([]openSession, 0, min(n, 1024))
	for range n {
		var o openSession
		var port, plen uint64
		for _, p := range []*uint64{&o.id, &o.origin, &port, &plen} {
			if *p, err = binary.ReadUvarint(br); err != nil {
				return fmt.Errorf("%w: session record", appstate.ErrBadStream)
			}
		}
		if port > 65535 || plen > 16 {
			return fmt.Errorf("%w: session record", appstate.ErrBadStream)
		}
		proto := make([]byte, plen)
		if _, err := io.ReadFull(br, proto); err != nil {
			return fmt.Errorf("%w: session record", appstate.ErrBadStream)
		}
		o.port = Port{Number: int(port), Protocol: string(proto)}
		opens = append(opens, o)
	}
	for _, id := range x.sessionIDs(func(*appSession) bool { return true }) {
		x.closeSessionLocked(id)
	}
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
	for _, o := range opens {
		op := Op{Kind: KindOpen, Port: o.port.Number, Protocol: o.port.Protocol}
		if val, down := x.execLocked(raftcore.Entry{Group: x.cfg.Group, Index: index, Session: o.id, Origin: o.origin}, op); down || val != nil {
			x.cfg.Log.Warn("re-open session after snapshot restore", "group", x.cfg.Group, "session", fmt.Sprintf("%x", o.id),
				"app_down", down, "reply", string(val))
		}
	}
	x.setApplied(index)
	x.cfg.Trace.Write(TraceLine{Kind: "restore", Group: x.cfg.Group, Index: index, Origin: x.cfg.Self,
		Op: fmt.Sprintf("RESTORE bytes=%d sessions=%d", total, len(opens)), Latency: time.Since(t0), Exec: time.Since(t0)})
	return nil
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
