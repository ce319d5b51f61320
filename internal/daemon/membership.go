package daemon

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/internal/membership"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication"
)

// followKubernetes keeps member g of a kubernetes-membership group in step
// with the API server until ctx ends: member addresses follow the pods
// (Discovery.Watch), and when a StatefulSet owns the pods, the group's
// membership follows its spec.replicas (membership.Reconciler; every member
// watches, only the leader changes the membership).
func (d *Daemon) followKubernetes(ctx context.Context, disc *Discovery, spec replication.Spec, plan StartPlan, g *raftcore.Group) {
	var mu sync.Mutex
	addrs := map[uint64]string{}
	setAddr := func(id uint64, addr string) {
		mu.Lock()
		addrs[id] = addr
		mu.Unlock()
		g.SetPeerAddr(id, addr)
	}
	go func() {
		if err := disc.Watch(ctx, spec, setAddr); err != nil && ctx.Err() == nil {
			d.log.Error("pod watch failed; member addresses will not follow pods", "group", spec.GroupKey(), "err", err)
		}
	}()
	if plan.StatefulSet == "" {
		return
	}
	var size atomic.Int64
	size.Store(-1) // unknown until the watch lists the StatefulSet
	r := &membership.Reconciler{
		Group: g,
		Size: func() (uint64, bool) {
			n := size.Load()
			return uint64(max(n, 0)), n >= 0
		},
		Addr: func(id uint64) string {
			mu.Lock()
			defer mu.Unlock()
			if a := addrs[id]; a != "" {
				return a
			}
			return PendingAddr
		},
		Log: d.log,
	}
	go func() {
		err := disc.WatchSize(ctx, spec.Namespace, plan.StatefulSet, func(n uint64) {
			if old := size.Swap(int64(n)); old != int64(n) {
				d.log.Info("group size from its StatefulSet", "group", spec.GroupKey(), "statefulset", plan.StatefulSet,
					"replicas", n, "was", old)
				r.Kick()
			}
		})
		if err != nil && ctx.Err() == nil {
			d.log.Error("statefulset watch failed; the group's membership will not follow its replicas",
				"group", spec.GroupKey(), "statefulset", plan.StatefulSet, "err", err)
		}
	}()
	go r.Run(ctx)
	if !plan.Formed {
		go d.markFormedWhenLed(ctx, disc, spec, plan, g)
	}
}

// markFormedWhenLed writes "formed" in the group's record once this member
// leads and has committed an entry past the bootstrapped membership: from
// then on a member with a new data directory catches up before it votes.
func (d *Daemon) markFormedWhenLed(ctx context.Context, disc *Discovery, spec replication.Spec, plan StartPlan, g *raftcore.Group) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := g.Status()
		if st.State != "StateLeader" || st.Commit <= plan.Members {
			continue
		}
		if err := disc.markFormed(ctx, spec.GroupKey(), plan.UID); err != nil {
			d.log.Warn("cannot record that the group formed; retrying", "group", spec.GroupKey(), "err", err)
			continue
		}
		d.log.Info("group formed", "group", spec.GroupKey(), "leader", st.ID, "term", st.Term, "commit", st.Commit,
			"record", RecordNamespace+"/"+recordName(spec.GroupKey()))
		return
	}
}
