package raftcore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// Donor snapshots: a member whose state machine is known wrong (its app
// diverged from the majority's) must not restore its own snapshots, which
// may hold the divergence. It pulls a healthy member's latest snapshot
// instead (FetchState), and its state machine restores that one in place
// of its own at its next start (the caller's business: raftcore only moves
// and checks the bytes).

// ErrNoStateFetch: the transport cannot pull another member's snapshot.
var ErrNoStateFetch = errors.New("raftcore: the transport cannot fetch another member's snapshot")

// donorPollInterval is how often OpenState looks for the new snapshot it
// asked for.
const donorPollInterval = 100 * time.Millisecond

// OpenState implements StateServer.
func (n *Node) OpenState(ctx context.Context, group string, requester, minIndex uint64) (*raftpb.Snapshot, io.ReadCloser, error) {
	g, ok := n.Group(group)
	if !ok {
		return nil, nil, fmt.Errorf("raftcore: state of group %s, which does not run here", group)
	}
	return g.openState(ctx, requester, minIndex)
}

var _ StateServer = (*Node)(nil)

// openState returns the group's latest snapshot at or after minIndex with
// its state file opened (an open file survives the purge of older ones).
// When the latest is older, the apply goroutine is asked for a new one; a
// state machine that cannot take one (e.g. its own app is being repaired)
// leaves the request waiting until ctx ends.
func (g *Group) openState(ctx context.Context, requester, minIndex uint64) (*raftpb.Snapshot, io.ReadCloser, error) {
	g.mu.Lock()
	_, member := g.peers[requester]
	g.mu.Unlock()
	if !member {
		return nil, nil, fmt.Errorf("raftcore: group %s: %d is not a member", g.name, requester)
	}
	if g.cfg.SnapshotEvery == 0 {
		return nil, nil, fmt.Errorf("raftcore: group %s takes no snapshots", g.name)
	}
	for {
		snap, err := g.ds.mem.Snapshot()
		if err != nil {
			return nil, nil, fmt.Errorf("group %s: latest snapshot: %w", g.name, err)
		}
		if idx := snap.GetMetadata().GetIndex(); idx >= minIndex && idx > 0 {
			st, err := unmarshalSnapshotState(snap.GetData())
			if err != nil {
				return nil, nil, fmt.Errorf("group %s: snapshot %d: %w", g.name, idx, err)
			}
			if st.Ext == nil {
				return nil, nil, fmt.Errorf("group %s: snapshot %d has no state file (the state machine is not a StreamSnapshotter)", g.name, idx)
			}
			f, err := os.Open(g.statePath(idx))
			if err == nil {
				g.log.Info("sending a donor snapshot", "to", requester, "index", idx, "bytes", st.Ext.Size)
				return snap, f, nil
			}
			if !errors.Is(err, os.ErrNotExist) {
				return nil, nil, fmt.Errorf("group %s: open state file %d: %w", g.name, idx, err)
			}
			// purged after a newer snapshot: look again
		} else if !g.forceSnap.Swap(true) {
			g.log.Info("taking a snapshot for a member rebuilt from this one", "to", requester, "min_index", minIndex, "latest", idx)
			g.applyq.push(applyItem{})
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("group %s: no snapshot at or after index %d: %w", g.name, minIndex, ctx.Err())
		case <-g.stopc:
			return nil, nil, g.stoppedErr()
		case <-time.After(donorPollInterval):
		}
	}
}

// DonorStatePath is where FetchState keeps the state it pulled, in the
// group's directory (not among its own snapshot files, which it must not
// be mistaken for).
func (g *Group) DonorStatePath() string { return filepath.Join(g.ncfg.DataDir, g.name, "donor.state") }

// FetchState pulls member from's latest snapshot at or after minIndex into
// DonorStatePath, checked against the snapshot's reference (size, SHA-256)
// as it streams, and returns its index.
func (g *Group) FetchState(ctx context.Context, from, minIndex uint64) (uint64, error) {
	sf, ok := g.ncfg.Transport.(StateFetcher)
	if !ok {
		return 0, ErrNoStateFetch
	}
	g.mu.Lock()
	addr, ok := g.peers[from]
	g.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("group %s: no address for member %d", g.name, from)
	}
	t0 := time.Now()
	snap, body, err := sf.FetchState(ctx, g.name, g.id, from, addr, minIndex)
	if err != nil {
		return 0, fmt.Errorf("group %s: fetch member %d's snapshot: %w", g.name, from, err)
	}
	defer body.Close()
	idx := snap.GetMetadata().GetIndex()
	st, err := unmarshalSnapshotState(snap.GetData())
	if err == nil && st.Ext == nil {
		err = errors.New("no state file reference")
	}
	if err == nil && idx < minIndex {
		err = fmt.Errorf("index %d is before the %d asked for", idx, minIndex)
	}
	if err != nil {
		return 0, fmt.Errorf("group %s: member %d's snapshot: %w", g.name, from, err)
	}
	if _, err := g.writeFileAt(g.DonorStatePath(), idx, func(w io.Writer) (int64, error) {
		return io.Copy(w, newCheckedReader(body, st.Ext))
	}); err != nil {
		return 0, fmt.Errorf("group %s: receive member %d's snapshot %d: %w", g.name, from, idx, err)
	}
	d := time.Since(t0)
	g.ncfg.Metrics.observeTransfer(g.name, "in", from, int64(st.Ext.Size), d)
	g.log.Info("donor snapshot received", "from", from, "index", idx, "bytes", st.Ext.Size, "duration", d.String())
	return idx, nil
}
