package raftcore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// diskStorage is one group's durable state: etcd's WAL (HardState, entries,
// snapshot markers) and snapshot files, mirrored into raft.MemoryStorage
// which raft reads from.
type diskStorage struct {
	wal   *wal.WAL
	snap  *snap.Snapshotter
	mem   *raft.MemoryStorage
	fresh bool // no WAL existed: the group starts from an empty log

	// recovered state for the apply goroutine
	snapshot *raftpb.Snapshot // nil when none
}

func openDiskStorage(dir string, noFsync bool) (*diskStorage, error) {
	lg := zap.NewNop()
	walDir, snapDir := filepath.Join(dir, "wal"), filepath.Join(dir, "snap")
	if err := os.MkdirAll(snapDir, 0o700); err != nil {
		return nil, fmt.Errorf("create snap dir: %w", err)
	}
	ds := &diskStorage{snap: snap.New(lg, snapDir), mem: raft.NewMemoryStorage()}
	if !wal.Exist(walDir) {
		w, err := wal.Create(lg, walDir, nil)
		if err != nil {
			return nil, fmt.Errorf("create wal: %w", err)
		}
		if err := w.Close(); err != nil {
			return nil, fmt.Errorf("close new wal: %w", err)
		}
		ds.fresh = true
	}
	// Pick the newest snapshot that the WAL also recorded: a snapshot file
	// written without its WAL marker (crash in between) is ignored.
	walSnaps, err := wal.ValidSnapshotEntries(lg, walDir)
	if err != nil {
		return nil, fmt.Errorf("list wal snapshots: %w", err)
	}
	s, err := ds.snap.LoadNewestAvailable(walSnaps)
	if err != nil && !errors.Is(err, snap.ErrNoSnapshot) {
		return nil, fmt.Errorf("load snapshot: %w", err)
	}
	walSnap := &walpb.Snapshot{}
	if s != nil {
		md := s.GetMetadata()
		walSnap = &walpb.Snapshot{Index: new(md.GetIndex()), Term: new(md.GetTerm()), ConfState: md.GetConfState()}
		if err := ds.mem.ApplySnapshot(s); err != nil {
			return nil, fmt.Errorf("apply snapshot to memory storage: %w", err)
		}
		ds.snapshot = s
	}
	w, err := wal.Open(lg, walDir, walSnap)
	if err != nil {
		return nil, fmt.Errorf("open wal: %w", err)
	}
	_, hs, ents, err := w.ReadAll()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("read wal: %w", err)
	}
	if noFsync {
		w.SetUnsafeNoFsync()
	}
	ds.wal = w
	if hs != nil {
		if err := ds.mem.SetHardState(hs); err != nil {
			return nil, fmt.Errorf("restore hard state: %w", err)
		}
	}
	if err := ds.mem.Append(ents); err != nil {
		return nil, fmt.Errorf("restore entries: %w", err)
	}
	if len(ents) > 0 || s != nil || !raft.IsEmptyHardState(hs) {
		ds.fresh = false
	}
	return ds, nil
}

// saveSnapshot persists a snapshot: the snapshot file first, then its WAL
// marker (so WAL replay can start from it), then lets the WAL drop segments
// older than it.
func (ds *diskStorage) saveSnapshot(s *raftpb.Snapshot) error {
	md := s.GetMetadata()
	if err := ds.snap.SaveSnap(s); err != nil {
		return fmt.Errorf("save snapshot file: %w", err)
	}
	ws := &walpb.Snapshot{Index: new(md.GetIndex()), Term: new(md.GetTerm()), ConfState: md.GetConfState()}
	if err := ds.wal.SaveSnapshot(ws); err != nil {
		return fmt.Errorf("save wal snapshot marker: %w", err)
	}
	if err := ds.wal.ReleaseLockTo(md.GetIndex()); err != nil {
		return fmt.Errorf("release wal: %w", err)
	}
	return nil
}

func (ds *diskStorage) close() error { return ds.wal.Close() }
