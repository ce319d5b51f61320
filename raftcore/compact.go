package raftcore

import (
	"errors"
	"fmt"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Compaction: a state machine snapshot taken by the apply goroutine becomes
// a raft snapshot and trims the log.

// compactMargin is how many applied entries stay in the log after a
// snapshot, so slightly lagging followers catch up from the log instead of a
// full snapshot.
const compactMargin = 1024

type snapRequest struct {
	index uint64
	cs    *raftpb.ConfState
	data  []byte
}

// compact turns a state machine snapshot taken by the apply goroutine into a
// raft snapshot: durable first (file + WAL marker), then the in-memory log
// is trimmed, keeping compactMargin entries for slow followers.
func (g *Group) compact(s snapRequest) error {
	snap, err := g.ds.mem.CreateSnapshot(s.index, s.cs, s.data)
	if errors.Is(err, raft.ErrSnapOutOfDate) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	if err := g.ds.saveSnapshot(snap); err != nil {
		return err
	}
	if s.index > compactMargin {
		if err := g.ds.mem.Compact(s.index - compactMargin); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("compact: %w", err)
		}
	}
	g.purgeFiles()
	g.ncfg.Metrics.incSnapshots(g.name)
	logBytes, entries, err := g.DiskUsage()
	if err != nil {
		g.log.Warn("disk usage", "err", err)
	}
	g.ncfg.Metrics.setLog(g.name, logBytes, entries)
	g.log.Info("snapshot saved", "index", s.index, "raft_snapshot_bytes", len(s.data), "log_bytes", logBytes, "log_entries", entries)
	return nil
}
