package raftcore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// State files: a StreamSnapshotter's state for the snapshot at index lives
// in <group>/snap/<index as 16 hex digits>.state beside etcd's .snap files
// (which then hold only the session table, member addresses and a reference
// to the file: its size and SHA-256). A file is complete before anything
// refers to it: written to a temporary name, fsynced, renamed, directory
// fsynced, and only then is the raft snapshot saved (or, for a received
// one, handed to raft).
const (
	stateSuffix = ".state"
	tmpSuffix   = ".tmp"
)

func (g *Group) snapDir() string { return filepath.Join(g.ncfg.DataDir, g.name, "snap") }

func (g *Group) statePath(index uint64) string {
	return filepath.Join(g.snapDir(), fmt.Sprintf("%016x%s", index, stateSuffix))
}

// hashingWriter counts and hashes what it writes.
type hashingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (hw *hashingWriter) Write(p []byte) (int, error) {
	n, err := hw.w.Write(p)
	hw.h.Write(p[:n])
	hw.n += int64(n)
	return n, err
}

// writeStateFile streams the state for index into its state file, through
// fill, and returns the file's reference.
func (g *Group) writeStateFile(index uint64, fill func(io.Writer) (int64, error)) (*stateRef, error) {
	return g.writeFileAt(g.statePath(index), index, fill)
}

// writeFileAt streams a state for index into the file dst (complete or
// absent: temporary name, fsync, rename, directory fsync) and returns its
// reference.
func (g *Group) writeFileAt(dst string, index uint64, fill func(io.Writer) (int64, error)) (*stateRef, error) {
	f, err := os.CreateTemp(filepath.Dir(dst), fmt.Sprintf("%016x-*%s", index, tmpSuffix))
	if err != nil {
		return nil, fmt.Errorf("create state file: %w", err)
	}
	defer os.Remove(f.Name()) // no-op after the rename
	bw := bufio.NewWriterSize(f, 1<<20)
	hw := &hashingWriter{w: bw, h: sha256.New()}
	_, err = fill(hw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && !g.ncfg.UnsafeNoFsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("state file for index %d: %w", index, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return nil, fmt.Errorf("state file for index %d: %w", index, err)
	}
	if err := g.syncDir(filepath.Dir(dst)); err != nil {
		return nil, err
	}
	ref := &stateRef{Size: uint64(hw.n)}
	copy(ref.Sum[:], hw.h.Sum(nil))
	return ref, nil
}

func (g *Group) syncDir(dir string) error {
	if g.ncfg.UnsafeNoFsync {
		return nil
	}
	d, err := os.Open(dir)
	if err == nil {
		err = fileutil.Fsync(d)
		d.Close()
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// checkedReader fails at EOF when the bytes read do not match ref.
type checkedReader struct {
	r   io.Reader
	h   hash.Hash
	n   uint64
	ref *stateRef
}

func newCheckedReader(r io.Reader, ref *stateRef) *checkedReader {
	return &checkedReader{r: io.LimitReader(r, int64(ref.Size)+1), h: sha256.New(), ref: ref}
}

var errStateMismatch = errors.New("raftcore: snapshot state does not match its reference")

func (c *checkedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	c.n += uint64(n)
	if c.n > c.ref.Size {
		return n, fmt.Errorf("%w: more than %d bytes", errStateMismatch, c.ref.Size)
	}
	if errors.Is(err, io.EOF) {
		if c.n != c.ref.Size {
			return n, fmt.Errorf("%w: %d bytes, want %d", errStateMismatch, c.n, c.ref.Size)
		}
		if !bytes.Equal(c.h.Sum(nil), c.ref.Sum[:]) {
			return n, fmt.Errorf("%w: SHA-256 differs", errStateMismatch)
		}
	}
	return n, err
}

// restoreStateFile feeds the state file of index to the state machine,
// checking it against ref as it streams.
func (g *Group) restoreStateFile(sn StreamSnapshotter, index uint64, ref *stateRef) error {
	f, err := os.Open(g.statePath(index))
	if err != nil {
		return fmt.Errorf("open state file of snapshot %d: %w", index, err)
	}
	defer f.Close()
	cr := newCheckedReader(bufio.NewReaderSize(f, 1<<20), ref)
	if err := sn.RestoreFrom(index, cr); err != nil {
		return err
	}
	// The state machine may stop before EOF: the rest must still match.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return err
	}
	return nil
}

// receiveSnapshot keeps the state of an inbound MsgSnap as this group's
// state file (checked against the reference in the snapshot), then hands
// the message to raft. A MsgSnap without a state file is delivered as is.
func (g *Group) receiveSnapshot(m *raftpb.Message, body io.Reader) error {
	st, err := unmarshalSnapshotState(m.GetSnapshot().GetData())
	if err != nil {
		return fmt.Errorf("group %s: snapshot from %d: %w", g.name, m.GetFrom(), err)
	}
	idx := m.GetSnapshot().GetMetadata().GetIndex()
	if st.Ext != nil {
		t0 := time.Now()
		_, err := g.writeStateFile(idx, func(w io.Writer) (int64, error) {
			return io.Copy(w, newCheckedReader(body, st.Ext))
		})
		if err != nil {
			g.log.Warn("snapshot transfer failed", "from", m.GetFrom(), "index", idx, "err", err)
			return fmt.Errorf("group %s: receive snapshot %d from %d: %w", g.name, idx, m.GetFrom(), err)
		}
		d := time.Since(t0)
		g.ncfg.Metrics.observeTransfer(g.name, "in", m.GetFrom(), int64(st.Ext.Size), d)
		g.log.Info("snapshot received", "from", m.GetFrom(), "index", idx, "bytes", st.Ext.Size, "duration", d.String())
	}
	select {
	case g.recvc <- []*raftpb.Message{m}:
		return nil
	case <-g.stopc:
		return g.stoppedErr()
	}
}

// prepareSnapshots sends the MsgSnaps among msgs whose state is in a file:
// through the transport's SnapshotSender as a stream, else inlined (the
// file's bytes in the message). It returns the other messages.
func (g *Group) prepareSnapshots(to uint64, addr string, msgs []*raftpb.Message) []*raftpb.Message {
	out := msgs[:0]
	for _, m := range msgs {
		if m.GetType() != raftpb.MsgSnap {
			out = append(out, m)
			continue
		}
		st, err := unmarshalSnapshotState(m.GetSnapshot().GetData())
		if err != nil || st.Ext == nil {
			out = append(out, m)
			continue
		}
		idx := m.GetSnapshot().GetMetadata().GetIndex()
		// A member admitted after this snapshot would refuse it (it is not
		// in its ConfState): take a new one, and let raft retry with it.
		if cs := m.GetSnapshot().GetMetadata().GetConfState(); !slices.Contains(cs.GetVoters(), to) && !slices.Contains(cs.GetLearners(), to) {
			if !g.forceSnap.Swap(true) {
				g.log.Info("snapshot predates member; taking a new one for it", "to", to, "index", idx)
				g.applyq.push(applyItem{}) // wakes the apply goroutine even without new entries
			}
			g.rn.ReportSnapshot(to, raft.SnapshotFailure)
			continue
		}
		path := g.statePath(idx)
		if ss, ok := g.ncfg.Transport.(SnapshotSender); ok {
			t0 := time.Now()
			size := int64(st.Ext.Size)
			ss.SendSnapshot(g.name, to, addr, m, SnapshotBody{
				Size: size,
				Open: func() (io.ReadCloser, error) { return os.Open(path) },
				Done: func(sent int64, err error) {
					d := time.Since(t0)
					if err != nil {
						g.log.Warn("snapshot transfer failed", "to", to, "index", idx, "sent", sent, "err", err)
						return
					}
					g.ncfg.Metrics.observeTransfer(g.name, "out", to, sent, d)
					g.log.Info("snapshot sent", "to", to, "index", idx, "bytes", sent, "duration", d.String())
				},
			})
			continue
		}
		// No streaming transport: inline the state (bounded by the
		// transport's message size).
		data, err := os.ReadFile(path)
		if err != nil {
			g.log.Error("read state file to send", "to", to, "index", idx, "err", err)
			g.rn.ReportSnapshot(to, raft.SnapshotFailure)
			continue
		}
		st.Ext, st.SM = nil, data
		m.Snapshot = proto.Clone(m.GetSnapshot()).(*raftpb.Snapshot)
		m.Snapshot.Data = st.marshal()
		out = append(out, m)
	}
	return out
}

// Retention of old files after each snapshot: WAL segments (only those the
// WAL released: every entry in them is covered by a saved snapshot), etcd
// .snap files and state files.
const (
	keepWALFiles   = 1
	keepSnapFiles  = 2
	keepStateFiles = 2
)

// purgeFiles deletes what the retention leaves, synchronously after a
// snapshot, so the disk use is bounded by the snapshot cadence and not by
// a timer.
func (g *Group) purgeFiles() {
	dir := filepath.Join(g.ncfg.DataDir, g.name)
	g.purge(filepath.Join(dir, "wal"), ".wal", keepWALFiles, true)
	g.purge(g.snapDir(), ".snap", keepSnapFiles, false)
	g.purge(g.snapDir(), stateSuffix, keepStateFiles, false)
}

func (g *Group) purge(dir, suffix string, keep int, locked bool) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		g.log.Warn("purge old files", "dir", dir, "err", err)
		return
	}
	var names []string
	for _, e := range ents {
		switch {
		case strings.HasSuffix(e.Name(), suffix):
			names = append(names, e.Name())
		case suffix == stateSuffix && strings.HasSuffix(e.Name(), tmpSuffix) && g.oldTmp(filepath.Join(dir, e.Name())):
			_ = os.Remove(filepath.Join(dir, e.Name())) // an interrupted write or transfer
		}
	}
	slices.Sort(names) // zero-padded hex/decimal names sort by index
	for len(names) > keep {
		p := filepath.Join(dir, names[0])
		names = names[1:]
		if locked {
			l, err := fileutil.TryLockFile(p, os.O_WRONLY, fileutil.PrivateFileMode)
			if err != nil {
				return // still in use by the WAL: so are all newer ones
			}
			err = os.Remove(p)
			l.Close()
			if err != nil {
				g.log.Warn("purge old file", "file", p, "err", err)
				return
			}
			continue
		}
		if err := os.Remove(p); err != nil {
			g.log.Warn("purge old file", "file", p, "err", err)
		}
	}
}

// oldTmp reports whether a temporary state file is left from an earlier
// write (older than a minute: not one being written now).
func (g *Group) oldTmp(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && time.Since(fi.ModTime()) > time.Minute
}

// DiskUsage is the allocated size on disk of the group's WAL and snapshot
// directories, and the number of log entries held (raft's in-memory log,
// which mirrors the WAL after the last snapshot).
func (g *Group) DiskUsage() (bytes int64, entries uint64, err error) {
	dir := filepath.Join(g.ncfg.DataDir, g.name)
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n, err := allocatedSize(p)
		bytes += n
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("group %s: disk usage: %w", g.name, err)
	}
	first, ferr := g.ds.mem.FirstIndex()
	last, lerr := g.ds.mem.LastIndex()
	if ferr == nil && lerr == nil && last >= first {
		entries = last - first + 1
	}
	return bytes, entries, nil
}
