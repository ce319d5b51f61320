package daemon

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/kubecoretest"
)

// redisPod is a pod of the example StatefulSet "redis" (kubernetes membership).
func redisPod(ns string, ordinal int, ip string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("redis-%d", ordinal), Namespace: ns,
			Labels: map[string]string{podcontract.LabelReplicate: "true", "apps.kubernetes.io/pod-index": fmt.Sprint(ordinal)},
			Annotations: map[string]string{podcontract.AnnotationPorts: "6379/resp",
				podcontract.AnnotationMembership: podcontract.MembershipKubernetes, podcontract.AnnotationRaftPort: "7480"},
		},
		Status: corev1.PodStatus{PodIP: ip, Phase: corev1.PodRunning},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func redisSpec(t *testing.T, ordinal int) replication.Spec {
	t.Helper()
	p := redisPod("default", ordinal, "")
	spec, ok, err := replication.ParsePod(podcontract.Meta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, Annotations: p.Annotations})
	if err != nil || !ok {
		t.Fatalf("parse example pod: %v %v", ok, err)
	}
	return spec
}

// Without a StatefulSet: members 1..highest pod index, every member bootstraps.
func TestPlanStartWithoutStatefulSet(t *testing.T) {
	now := metav1.Now()
	tests := []struct {
		name string
		pods []*corev1.Pod
		want map[uint64]string
	}{
		{"all pods with IPs", []*corev1.Pod{redisPod("default", 0, "198.18.1.2"), redisPod("default", 1, "198.18.2.2"), redisPod("default", 2, "198.18.3.2")},
			map[uint64]string{1: "198.18.1.9:7480", 2: "198.18.2.2:7480", 3: "198.18.3.2:7480"}},
		{"pods without IP yet are pending", []*corev1.Pod{redisPod("default", 0, ""), redisPod("default", 2, "")},
			map[uint64]string{1: "198.18.1.9:7480", 2: PendingAddr, 3: PendingAddr}},
		{"only self", nil, map[uint64]string{1: "198.18.1.9:7480"}},
		{"other groups, broken contracts, terminating and finished pods are ignored", []*corev1.Pod{
			redisPod("default", 4, "198.18.9.9", func(p *corev1.Pod) { p.Annotations[podcontract.AnnotationGroup] = "other" }),
			redisPod("default", 5, "198.18.9.8", func(p *corev1.Pod) { p.Annotations[podcontract.AnnotationPorts] = "nope" }),
			redisPod("default", 6, "198.18.9.7", func(p *corev1.Pod) { p.DeletionTimestamp = &now }),
			redisPod("default", 7, "198.18.9.6", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }),
			redisPod("default", 1, "198.18.2.2"),
		}, map[uint64]string{1: "198.18.1.9:7480", 2: "198.18.2.2:7480"}},
		{"raft port from each pod's annotation", []*corev1.Pod{
			redisPod("default", 1, "198.18.2.2", func(p *corev1.Pod) { p.Annotations[podcontract.AnnotationRaftPort] = "7000" })},
			map[uint64]string{1: "198.18.1.9:7480", 2: "198.18.2.2:7000"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var pods []corev1.Pod
			for _, p := range tc.pods {
				pods = append(pods, *p)
			}
			got := planStart(pods, nil, nil, redisSpec(t, 0), "198.18.1.9:7480")
			if got.Join || !maps.Equal(got.Peers, tc.want) {
				t.Fatalf("peers %v, want %v", got, tc.want)
			}
		})
	}
}

// The watch reports every other member's address, and the new one when a
// pod moves (deleted and re-created with another IP); pods of other
// namespaces are not seen.
func TestDiscoveryWatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := kubecoretest.New(t, redisPod("default", 0, "198.18.1.2"), redisPod("default", 1, "198.18.2.2"),
		redisPod("default", 2, ""), redisPod("other", 2, "198.18.7.7"))
	d := &Discovery{Client: srv.Client(t)}
	spec := redisSpec(t, 0)

	peers, err := d.Peers(ctx, spec, "redis-0", "198.18.1.2:7480")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[uint64]string{1: "198.18.1.2:7480", 2: "198.18.2.2:7480", 3: PendingAddr}; !maps.Equal(peers, want) {
		t.Fatalf("initial peers %v, want %v", peers, want)
	}

	type set struct {
		id   uint64
		addr string
	}
	got := make(chan set, 16)
	if err := d.Watch(ctx, spec, func(id uint64, addr string) { got <- set{id, addr} }); err != nil {
		t.Fatal(err)
	}
	expect := func(want set) {
		t.Helper()
		select {
		case s := <-got:
			if s != want {
				t.Fatalf("SetPeerAddr%v, want %v", s, want)
			}
		case <-ctx.Done():
			t.Fatalf("no SetPeerAddr%v", want)
		}
	}
	expect(set{2, "198.18.2.2:7480"}) // initial list: pod 0 is self, pod 2 has no IP
	// The fake cannot replay changes made before the watch stream opens.
	for srv.Watching() == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("the informer never opened its watch")
		case <-time.After(10 * time.Millisecond):
		}
	}

	pods := corev1.SchemeGroupVersion.WithResource("pods")
	// Pod 2 gets its IP.
	if err := srv.Tracker.Update(pods, redisPod("default", 2, "198.18.3.2"), "default"); err != nil {
		t.Fatal(err)
	}
	expect(set{3, "198.18.3.2:7480"})
	// Pod 1 is rescheduled: deleted, re-created elsewhere.
	if err := srv.Tracker.Delete(pods, "default", "redis-1"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Tracker.Create(pods, redisPod("default", 1, "198.18.4.2"), "default"); err != nil {
		t.Fatal(err)
	}
	expect(set{2, "198.18.4.2:7480"})
	select {
	case s := <-got:
		t.Fatalf("unexpected SetPeerAddr%v", s)
	default:
	}
}

func owned(sts string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		yes := true
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: sts, UID: "u1", Controller: &yes}}
	}
}

func ready(p *corev1.Pod) {
	p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue})
}

func redisSTS(replicas int32) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "redis", Namespace: "default", UID: "u1"},
		Spec: appsv1.StatefulSetSpec{Replicas: &replicas}}
}

// With a StatefulSet: while the record says the group never formed, a new
// member up to the record's size bootstraps exactly 1..size; otherwise it
// joins and catches up before voting.
func TestPlanStartWithStatefulSet(t *testing.T) {
	type want struct {
		peers                     map[uint64]string
		join, catchUpBeforeVoting bool
	}
	self := func(ordinal int) string { return fmt.Sprintf("198.18.%d.9:7480", ordinal+1) }
	newGroup := &groupRecord{Group: "default.redis", UID: "u1", Members: 3}
	formed := &groupRecord{Group: "default.redis", UID: "u1", Members: 3, Formed: true}
	tests := []struct {
		name    string
		ordinal int
		pods    []*corev1.Pod
		sts     *appsv1.StatefulSet
		rec     *groupRecord
		want    want
	}{
		{"OrderedReady: pod-0 alone bootstraps the full size", 0,
			[]*corev1.Pod{redisPod("default", 0, "", owned("redis"))}, redisSTS(3), newGroup,
			want{peers: map[uint64]string{1: self(0), 2: PendingAddr, 3: PendingAddr}}},
		{"OrderedReady: pod-1 of a group not formed yet bootstraps the same", 1,
			[]*corev1.Pod{redisPod("default", 0, "198.18.1.2", owned("redis"), ready), redisPod("default", 1, "", owned("redis"))}, redisSTS(3), newGroup,
			want{peers: map[uint64]string{1: "198.18.1.2:7480", 2: self(1), 3: PendingAddr}}},
		{"OrderedReady: pod-2 of a formed group catches up first", 2,
			[]*corev1.Pod{redisPod("default", 0, "198.18.1.2", owned("redis"), ready), redisPod("default", 1, "198.18.2.2", owned("redis"), ready),
				redisPod("default", 2, "", owned("redis"))}, redisSTS(3), formed,
			want{peers: map[uint64]string{1: "198.18.1.2:7480", 2: "198.18.2.2:7480", 3: self(2)}, join: true, catchUpBeforeVoting: true}},
		{"scaled before the group formed: bootstraps the record's size, not replicas", 0,
			[]*corev1.Pod{redisPod("default", 0, "", owned("redis")), redisPod("default", 4, "198.18.5.2", owned("redis"))}, redisSTS(5), newGroup,
			want{peers: map[uint64]string{1: self(0), 2: PendingAddr, 3: PendingAddr}}},
		{"above the record's size before the group formed: joins", 4,
			[]*corev1.Pod{redisPod("default", 0, "198.18.1.2", owned("redis")), redisPod("default", 4, "", owned("redis"))}, redisSTS(5), newGroup,
			want{peers: map[uint64]string{1: "198.18.1.2:7480", 5: self(4)}, join: true, catchUpBeforeVoting: true}},
		{"pod-0 moved to a node without its data: catches up before voting", 0,
			[]*corev1.Pod{redisPod("default", 0, "", owned("redis")), redisPod("default", 1, "198.18.2.2", owned("redis"), ready),
				redisPod("default", 2, "198.18.3.2", owned("redis"), ready)}, redisSTS(3), formed,
			want{peers: map[uint64]string{1: self(0), 2: "198.18.2.2:7480", 3: "198.18.3.2:7480"}, join: true, catchUpBeforeVoting: true}},
		{"scale 3 to 5: pod-3 joins a formed group", 3,
			[]*corev1.Pod{redisPod("default", 0, "198.18.1.2", owned("redis"), ready), redisPod("default", 1, "198.18.2.2", owned("redis"), ready),
				redisPod("default", 2, "198.18.3.2", owned("redis"), ready), redisPod("default", 3, "", owned("redis"))}, redisSTS(5), formed,
			want{peers: map[uint64]string{1: "198.18.1.2:7480", 2: "198.18.2.2:7480", 3: "198.18.3.2:7480", 4: self(3)},
				join: true, catchUpBeforeVoting: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var pods []corev1.Pod
			for _, p := range tc.pods {
				pods = append(pods, *p)
			}
			got := planStart(pods, tc.sts, tc.rec, redisSpec(t, tc.ordinal), self(tc.ordinal))
			if !maps.Equal(got.Peers, tc.want.peers) || got.Join != tc.want.join || got.CatchUpBeforeVoting != tc.want.catchUpBeforeVoting {
				t.Fatalf("plan %+v, want %+v", got, tc.want)
			}
			if got.StatefulSet != tc.sts.Name || got.Size != stsSize(tc.sts) || got.Members != tc.rec.Members || got.Why == "" {
				t.Fatalf("plan %+v: statefulset %q size %d members %d, reason empty?", got, tc.sts.Name, stsSize(tc.sts), tc.rec.Members)
			}
		})
	}
}

// The group record: created once (members = replicas) whoever asks first,
// kept while the StatefulSet is the same (a scale does not change it),
// marked formed once, and reset when the StatefulSet is re-created (another
// UID). A malformed record is a clear error, never overwritten.
func TestGroupRecord(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := kubecoretest.New(t)
	d := &Discovery{Client: srv.Client(t)}
	key := "default.redis"
	check := func(got groupRecord, err error, want groupRecord) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("record %+v, want %+v", got, want)
		}
	}
	sts := redisSTS(3)
	rec, err := d.ensureRecord(ctx, key, sts, 3)
	check(rec, err, groupRecord{Group: key, StatefulSet: "redis", UID: "u1", Members: 3})
	rec, err = d.ensureRecord(ctx, key, redisSTS(5), 5) // scaled: same set, same record
	check(rec, err, groupRecord{Group: key, StatefulSet: "redis", UID: "u1", Members: 3})
	if err := d.markFormed(ctx, key, "u1"); err != nil {
		t.Fatal(err)
	}
	if err := d.markFormed(ctx, key, "u1"); err != nil { // idempotent
		t.Fatal(err)
	}
	rec, err = d.ensureRecord(ctx, key, sts, 3)
	check(rec, err, groupRecord{Group: key, StatefulSet: "redis", UID: "u1", Members: 3, Formed: true})

	again := redisSTS(2)
	again.UID = "u2"
	if err := d.markFormed(ctx, key, "u2"); err != nil { // another set's mark leaves the record alone
		t.Fatal(err)
	}
	rec, err = d.ensureRecord(ctx, key, again, 2)
	check(rec, err, groupRecord{Group: key, StatefulSet: "redis", UID: "u2", Members: 2})

	cms := corev1.SchemeGroupVersion.WithResource("configmaps")
	obj, err := srv.Tracker.Get(cms, RecordNamespace, recordName(key))
	if err != nil {
		t.Fatal(err)
	}
	bad := obj.(*corev1.ConfigMap).DeepCopy()
	bad.Data[recMembers] = "three"
	if err := srv.Tracker.Update(cms, bad, RecordNamespace); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ensureRecord(ctx, key, again, 2); err == nil || !strings.Contains(err.Error(), "not a member count") {
		t.Fatalf("malformed record: %v", err)
	}
	if got, _ := srv.Tracker.Get(cms, RecordNamespace, recordName(key)); got.(*corev1.ConfigMap).Data[recMembers] != "three" {
		t.Fatal("a malformed record was overwritten")
	}
	// Members racing to create it all read one record.
	key2 := "default.race"
	errs := make(chan error, 4)
	recs := make(chan groupRecord, 4)
	for i := range 4 {
		go func() {
			r, err := d.ensureRecord(ctx, key2, redisSTS(int32(3+i)), uint64(3+i))
			recs <- r
			errs <- err
		}()
	}
	first := <-recs
	for range 3 {
		if r := <-recs; r != first {
			t.Fatalf("racing members read different records: %+v and %+v", first, r)
		}
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// Plan reads the StatefulSet that owns this member's pod; WatchSize
// reports its spec.replicas now and at every scale. A StatefulSet that
// cannot be read is an error naming it (the attach is retried).
func TestPlanAndWatchSize(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := kubecoretest.New(t, redisPod("default", 0, "198.18.1.2", owned("redis")), redisPod("default", 1, "", owned("redis")), redisSTS(3))
	d := &Discovery{Client: srv.Client(t)}
	plan, err := d.Plan(ctx, redisSpec(t, 1), "redis-1", "198.18.2.9:7480")
	if err != nil {
		t.Fatal(err)
	}
	if plan.StatefulSet != "redis" || plan.Size != 3 || len(plan.Peers) != 3 {
		t.Fatalf("plan %+v, want statefulset redis of size 3", plan)
	}
	sizes := make(chan uint64, 8)
	if err := d.WatchSize(ctx, "default", "redis", func(n uint64) { sizes <- n }); err != nil {
		t.Fatal(err)
	}
	expect := func(want uint64) {
		t.Helper()
		select {
		case n := <-sizes:
			if n != want {
				t.Fatalf("size %d, want %d", n, want)
			}
		case <-ctx.Done():
			t.Fatalf("no size %d", want)
		}
	}
	expect(3)
	for srv.Watching() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	if err := srv.Tracker.Update(appsv1.SchemeGroupVersion.WithResource("statefulsets"), redisSTS(5), "default"); err != nil {
		t.Fatal(err)
	}
	expect(5)

	// The StatefulSet is gone (deleted, the pod not yet): a clear error.
	gone := kubecoretest.New(t, redisPod("default", 0, "", owned("redis")))
	_, err = (&Discovery{Client: gone.Client(t)}).Plan(ctx, redisSpec(t, 0), "redis-0", "198.18.1.9:7480")
	if err == nil || !strings.Contains(err.Error(), "statefulset default/redis") {
		t.Fatalf("plan without its StatefulSet: %v", err)
	}
}
