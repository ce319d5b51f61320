package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/smr-io/smr-cri/internal/kubecore"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/podcontract"
)

// PendingAddr stands for a member whose pod has no IP yet (its sandbox does
// not run yet). raftcore needs an address for every member; messages to this
// one are refused at once on loopback and reported unreachable, until the
// watch learns the real address and calls Group.SetPeerAddr.
const PendingAddr = "127.0.0.1:1"

// replicateSelector selects the pods that ask for replication.
var replicateSelector = podcontract.LabelReplicate + "=true"

// NewKubeClient builds the API client from a kubeconfig file: core/v1
// only (see package kubecore for why not client-go's typed clientset).
func NewKubeClient(kubeconfig string) (*kubecore.Client, error) {
	return kubecore.FromKubeconfig(kubeconfig)
}

// Discovery finds and follows the members of groups with
// smr.io/membership=kubernetes: the pods of the same namespace whose
// contract names the same group. Member ID is the pod's (from
// apps.kubernetes.io/pod-index + 1, or its name's ordinal + 1, as
// replication.ParsePod reads it); address is podIP:smr.io/raft-port.
type Discovery struct {
	Client *kubecore.Client
	Log    *slog.Logger
}

// member is what a pod tells about its group membership.
type member struct {
	id   uint64
	addr string // "" while the pod has no IP
}

// podMember returns the member a pod stands for, or ok=false when the pod
// is not a live member of spec's group (other group, broken contract,
// terminating or finished).
func podMember(pod *corev1.Pod, spec replication.Spec) (member, bool) {
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return member{}, false
	}
	ps, ok, err := replication.ParsePod(podcontract.Meta{Name: pod.Name, Namespace: pod.Namespace,
		Labels: pod.Labels, Annotations: pod.Annotations})
	if err != nil || !ok || ps.GroupKey() != spec.GroupKey() {
		return member{}, false
	}
	m := member{id: ps.MemberID}
	if ip := pod.Status.PodIP; ip != "" {
		m.addr = net.JoinHostPort(ip, strconv.Itoa(ps.RaftPort))
	}
	return m, true
}

// initialPeers is the group's membership at first start: members 1..N with
// N the highest member ID among the group's pods (a StatefulSet with
// podManagementPolicy Parallel has created all its pods before any sandbox
// runs), each at its pod's address or PendingAddr; self is at selfAddr.
func initialPeers(pods []corev1.Pod, spec replication.Spec, selfAddr string) map[uint64]string {
	peers := map[uint64]string{}
	highest := spec.MemberID
	for i := range pods {
		m, ok := podMember(&pods[i], spec)
		if !ok {
			continue
		}
		highest = max(highest, m.id)
		if m.addr != "" {
			peers[m.id] = m.addr
		}
	}
	for id := uint64(1); id <= highest; id++ {
		if peers[id] == "" {
			peers[id] = PendingAddr
		}
	}
	peers[spec.MemberID] = selfAddr
	return peers
}

// Peers lists the group's pods and returns the initial membership.
func (d *Discovery) Peers(ctx context.Context, spec replication.Spec, selfAddr string) (map[uint64]string, error) {
	list, err := d.Client.ListPods(ctx, spec.Namespace, replicateSelector)
	if err != nil {
		return nil, fmt.Errorf("list pods of group %s: %w", spec.GroupKey(), err)
	}
	return initialPeers(list.Items, spec, selfAddr), nil
}

// Watch calls setAddr(id, addr) for every member of spec's group whose pod
// shows an IP, now and whenever a pod moves (a rescheduled replica gets a
// new IP), until ctx ends. Its own member is left alone (it listens where
// its sandbox is). It returns once the initial list is synced.
func (d *Discovery) Watch(ctx context.Context, spec replication.Spec, setAddr func(id uint64, addr string)) error {
	inf := cache.NewSharedIndexInformer(d.Client.PodListWatch(spec.Namespace, replicateSelector), &corev1.Pod{}, 0, cache.Indexers{})
	handle := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		if m, ok := podMember(pod, spec); ok && m.addr != "" && m.id != spec.MemberID {
			setAddr(m.id, m.addr)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    handle,
		UpdateFunc: func(_, obj any) { handle(obj) },
	}); err != nil {
		return fmt.Errorf("watch pods of group %s: %w", spec.GroupKey(), err)
	}
	go inf.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("watch pods of group %s: %w", spec.GroupKey(), errors.Join(ctx.Err(), errors.New("cache not synced")))
	}
	return nil
}
