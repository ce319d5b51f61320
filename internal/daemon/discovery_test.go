package daemon

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

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

func TestInitialPeers(t *testing.T) {
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
			got := initialPeers(pods, redisSpec(t, 0), "198.18.1.9:7480")
			if !maps.Equal(got, tc.want) {
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

	peers, err := d.Peers(ctx, spec, "198.18.1.2:7480")
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
