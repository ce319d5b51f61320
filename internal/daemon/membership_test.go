package daemon

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/kubecoretest"
)

// stsPod is pod redis-<ordinal> of StatefulSet "redis" (kubernetes
// membership) as the API server shows it and as the CRI hands it to the
// daemon: on loopback, each member with its own raft port.
func stsPod(ordinal, raftPort int) (*corev1.Pod, podcontract.Pod) {
	api := redisPod("default", ordinal, "127.0.0.1", owned("redis"), func(p *corev1.Pod) {
		p.Annotations[podcontract.AnnotationRaftPort] = strconv.Itoa(raftPort)
	})
	cri := onePod(fmt.Sprintf("sb-%d", ordinal), raftPort)
	cri.Name = api.Name
	cri.Labels = api.Labels
	cri.Annotations = api.Annotations
	return api, cri
}

// Real daemons and raft groups, the API server faked: a StatefulSet of 3
// whose pods start one at a time (OrderedReady). Member 1 alone bootstraps
// members 1..3 and cannot order anything; member 2 completes the quorum;
// the leader records the group as formed; member 3 then joins and catches
// up before it votes. Scaling the StatefulSet to 4 adds member 4 as a
// learner, which the leader promotes once it caught up; every app ends with
// every write.
func TestStatefulSetGroupFormsOrderedAndGrows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	sts := redisSTS(3)
	srv := kubecoretest.New(t, sts)
	podsGVR := corev1.SchemeGroupVersion.WithResource("pods")
	var apps []*counterApp
	var daemons []*loopbackDaemon
	var clients []string
	start := func(ordinal int) {
		t.Helper()
		api, cri := stsPod(ordinal, freeport.PortT(t))
		if err := srv.Tracker.Add(api); err != nil {
			t.Fatal(err)
		}
		app := newCounterApp(t)
		ld := newLoopbackDaemonWithConfig(t, t.TempDir(), app, func(c *Config) { c.Kube = srv.Client(t) })
		t.Cleanup(func() { ld.Close(context.Background()) })
		if err := ld.AttachPod(ctx, cri); err != nil {
			t.Fatalf("attach %s: %v", api.Name, err)
		}
		apps, daemons, clients = append(apps, app), append(daemons, ld), append(clients, <-ld.clientAddr)
		// Ready, as kubelet would report it once the container runs.
		api.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		if err := srv.Tracker.Update(podsGVR, api, "default"); err != nil {
			t.Fatal(err)
		}
	}
	status := func(i int) raftcore.Status {
		d := daemons[i].Daemon
		d.status.mu.Lock()
		defer d.status.mu.Unlock()
		for _, tm := range d.status.byID {
			return tm.group.Status()
		}
		return raftcore.Status{}
	}

	start(0)
	time.Sleep(time.Second) // ten election timeouts
	if st := status(0); st.State == "StateLeader" || len(st.Members) != 3 {
		t.Fatalf("member 1 alone: %+v; want a follower of a 3-member group", st)
	}
	rec, err := (&Discovery{Client: srv.Client(t)}).ensureRecord(ctx, "default.redis", sts, 3)
	if err != nil || rec.Formed || rec.Members != 3 {
		t.Fatalf("record before the group formed: %+v, %v", rec, err)
	}
	start(1)
	incr(t, ctx, clients[0], 5)
	waitUntil(t, ctx, "the record marked formed", func() bool {
		rec, err := (&Discovery{Client: srv.Client(t)}).ensureRecord(ctx, "default.redis", sts, 3)
		return err == nil && rec.Formed
	})
	start(2)
	incr(t, ctx, clients[2], 5)

	// Scale to 4.
	scaled := redisSTS(4)
	if err := srv.Tracker.Update(appsv1.SchemeGroupVersion.WithResource("statefulsets"), scaled, "default"); err != nil {
		t.Fatal(err)
	}
	start(3)
	incr(t, ctx, clients[3], 5)
	waitUntil(t, ctx, "member 4 promoted on every member", func() bool {
		for i := range daemons {
			st := status(i)
			ids := slices.Sorted(func(yield func(uint64) bool) {
				for id := range st.Members {
					if !yield(id) {
						return
					}
				}
			})
			if !slices.Equal(ids, []uint64{1, 2, 3, 4}) || len(st.Learners) > 0 || st.CatchingUp {
				return false
			}
		}
		return true
	})
	for i, app := range apps {
		waitUntil(t, ctx, fmt.Sprintf("app %d at k=15", i+1), func() bool { _, k := app.counts(); return k == 15 })
	}
}

func waitUntil(t *testing.T, ctx context.Context, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		if ctx.Err() != nil {
			t.Fatalf("%s: not reached", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
