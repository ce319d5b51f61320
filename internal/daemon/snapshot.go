package daemon

import (
	"context"
	"fmt"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/appstate"
	"github.com/smr-io/smr-cri/replication/podcontract"
)

// enableSnapshots turns on app snapshots and log compaction for a member
// whose app has a snapshot contract (replication.Spec.Snapshots), with the
// credentials of the Secret named by smr.io/app-credentials. A group
// without it keeps its whole log, and the daemon says so once per member.
func (d *Daemon) enableSnapshots(ctx context.Context, spec replication.Spec, sm raftcore.StateMachine, gc *raftcore.GroupConfig) error {
	x, ok := replication.ExecutorOf(sm)
	if !ok {
		return nil
	}
	if !spec.Snapshots() {
		d.log.Warn("this group keeps its whole raft log: its app has no snapshot contract (HTTP ports need "+
			podcontract.AnnotationSnapshotPath+", or "+podcontract.AnnotationSnapshotEvery+" is 0)",
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
	src := "Secret " + spec.Namespace + "/" + spec.AppCredentials + " (" + podcontract.AnnotationAppCredentials + ")"
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
