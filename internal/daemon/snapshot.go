package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/appstate"
)

// enableSnapshots turns on app snapshots and log compaction for a member
// whose app has a snapshot contract (replication.Spec.Snapshots), with the
// credentials of the Secret named by smr.io/app-credentials. A group
// without it keeps its whole log, and the daemon says so once per member.
func (d *Daemon) enableSnapshots(ctx context.Context, spec replication.Spec, sm raftcore.StateMachine, gc *raftcore.GroupConfig) error {
	x, ok := sm.(*replication.Executor)
	if !ok {
		return nil
	}
	if !spec.Snapshots() {
		d.log.Warn("this group keeps its whole raft log: its app has no snapshot contract (HTTP ports need "+
			replication.AnnotationSnapshotPath+", or "+replication.AnnotationSnapshotEvery+" is 0)",
			"group", spec.GroupKey(), "member", spec.MemberID)
		return nil
	}
	creds, err := d.appCredentials(ctx, spec)
	if err != nil {
		return err
	}
	if err := x.EnableSnapshots(replication.SnapshotConfig{SnapshotPath: spec.SnapshotPath, Credentials: creds}); err != nil {
		return err
	}
	gc.SnapshotEvery, gc.SnapshotBytes = spec.SnapshotEvery, uint64(spec.SnapshotBytes)
	return nil
}

// appCredentials reads the Secret of smr.io/app-credentials (keys
// "password", optional "username") from the pod's namespace.
func (d *Daemon) appCredentials(ctx context.Context, spec replication.Spec) (appstate.Credentials, error) {
	if spec.AppCredentials == "" {
		return appstate.Credentials{}, nil
	}
	src := "Secret " + spec.Namespace + "/" + spec.AppCredentials + " (" + replication.AnnotationAppCredentials + ")"
	disc, err := d.discovery()
	if err != nil {
		return appstate.Credentials{}, fmt.Errorf("%s needs the API server: %w", src, err)
	}
	sec, err := disc.Client.GetSecret(ctx, spec.Namespace, spec.AppCredentials)
	if err != nil {
		return appstate.Credentials{}, fmt.Errorf("read %s: %w", src, err)
	}
	pw := sec.Data["password"]
	if len(pw) == 0 {
		return appstate.Credentials{}, fmt.Errorf("%s has no key \"password\"", src)
	}
	return appstate.Credentials{Username: string(sec.Data["username"]), Password: string(pw), Source: src}, nil
}

var _ raftcore.StreamSnapshotter = (*resumingSM)(nil)

var errNoStreamSnapshots = errors.New("daemon: the member's state machine has no snapshots")

// SnapshotTo implements raftcore.StreamSnapshotter for the wrapped executor.
func (r *resumingSM) SnapshotTo(index uint64, w io.Writer) error {
	sn, ok := r.next.(raftcore.StreamSnapshotter)
	if !ok {
		return errNoStreamSnapshots
	}
	return sn.SnapshotTo(index, w)
}

// RestoreFrom implements raftcore.StreamSnapshotter. The app is replaced by
// the snapshot's state, so every later entry must run on it: the resume
// point of the progress record no longer applies (the record moves to the
// snapshot's index). At a daemon restart this restores the latest
// snapshot into the running app too, and the suffix is executed again on
// it: correct, at the cost of one restore.
func (r *resumingSM) RestoreFrom(index uint64, rd io.Reader) error {
	sn, ok := r.next.(raftcore.StreamSnapshotter)
	if !ok {
		return errNoStreamSnapshots
	}
	if err := sn.RestoreFrom(index, rd); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resumed, r.open = true, nil
	r.cur = position{index, 0}
	if err := r.prog.write(r.cur); err != nil {
		r.log.Error("record applied position after snapshot restore", "err", err)
	}
	r.log.Info("app restored from a snapshot", "group", r.group, "index", index)
	return nil
}
