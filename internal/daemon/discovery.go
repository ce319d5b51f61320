package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// StartPlan is how a member with kubernetes membership starts.
type StartPlan struct {
	// Peers is the membership written at bootstrap and, at every start,
	// where the members are (PendingAddr until a pod has an IP); self is
	// at its own address.
	Peers map[uint64]string
	// Join, CatchUpBeforeVoting: raftcore.GroupConfig's, used only when the
	// member's data directory is new (a member with a log resumes it).
	Join, CatchUpBeforeVoting bool
	// StatefulSet owns the pods ("" for pods without one) and UID is its
	// UID; Size is its spec.replicas, the group's wanted size.
	StatefulSet, UID string
	Size             uint64
	// Members is the membership a new group bootstraps (1..Members), from
	// the group record.
	Members uint64
	// Formed: the record says the group has formed.
	Formed bool
	// Why explains Join and CatchUpBeforeVoting, for the log.
	Why string
}

// stsSize is a StatefulSet's spec.replicas (1 when unset, as the API
// server defaults it).
func stsSize(sts *appsv1.StatefulSet) uint64 {
	if r := sts.Spec.Replicas; r != nil {
		return uint64(max(*r, 0))
	}
	return 1
}

// planStart decides how member spec.MemberID starts from the group's pods,
// their StatefulSet and the group's record (both nil for pods without a
// StatefulSet).
//
// With a StatefulSet, a member whose data directory is new bootstraps the
// record's membership 1..Members (spec.replicas when the record was made)
// only while the record says the group never formed: every member of a
// group being created writes the same bootstrap entries and votes at once,
// so pod-0 of an OrderedReady set, alone at first, creates the group with
// its full size (it never acknowledges a write on fewer than a majority of
// it), and pod-1 completes its quorum. Once the group formed, a new data
// directory is a new member (scale up: the leader adds it) or one whose
// data was lost (its pod moved to another node): it joins with an empty
// log and catches up before it votes (raftcore's CatchUpBeforeVoting), so
// it never votes with a log it forgot. A member above Members joins the
// same way even before the group formed: only one membership is ever
// bootstrapped.
//
// Pods without a StatefulSet keep the behaviour of static groups: members
// 1..highest id, every member bootstraps that membership.
func planStart(pods []corev1.Pod, sts *appsv1.StatefulSet, rec *groupRecord, spec replication.Spec, selfAddr string) StartPlan {
	p := StartPlan{Peers: map[uint64]string{}}
	highest := spec.MemberID
	for i := range pods {
		m, ok := podMember(&pods[i], spec)
		if !ok {
			continue
		}
		highest = max(highest, m.id)
		if m.addr != "" {
			p.Peers[m.id] = m.addr
		}
	}
	bootstrap := highest
	switch {
	case sts == nil || rec == nil:
		p.Why = fmt.Sprintf("no StatefulSet: bootstraps members 1..%d (the highest pod index)", highest)
	case !rec.Formed && spec.MemberID <= rec.Members:
		bootstrap = rec.Members
		p.Why = fmt.Sprintf("the group never formed: bootstraps members 1..%d", bootstrap)
	case rec.Formed:
		p.Join, p.CatchUpBeforeVoting = true, true
		p.Why = "the group has formed: joins with an empty log and catches up before voting"
	default:
		p.Join, p.CatchUpBeforeVoting = true, true
		p.Why = fmt.Sprintf("member %d is above the bootstrapped 1..%d: joins and catches up before voting", spec.MemberID, rec.Members)
	}
	if sts != nil {
		p.StatefulSet, p.UID, p.Size = sts.Name, string(sts.UID), stsSize(sts)
	}
	if rec != nil {
		p.Members, p.Formed = rec.Members, rec.Formed
	}
	if !p.Join {
		// Bootstrap: Peers is exactly the membership written (raftcore
		// bootstraps every listed member), the others' addresses come
		// from the pod watch.
		for id := range p.Peers {
			if id > bootstrap {
				delete(p.Peers, id)
			}
		}
		for id := uint64(1); id <= bootstrap; id++ {
			if p.Peers[id] == "" {
				p.Peers[id] = PendingAddr
			}
		}
	}
	p.Peers[spec.MemberID] = selfAddr
	return p
}

// ownerStatefulSet is the name of the StatefulSet controlling pod, "" for
// none.
func ownerStatefulSet(pod *corev1.Pod) string {
	if ref := metav1.GetControllerOf(pod); ref != nil && ref.Kind == "StatefulSet" &&
		strings.HasPrefix(ref.APIVersion, appsv1.GroupName+"/") {
		return ref.Name
	}
	return ""
}

// Plan lists the group's pods, reads the StatefulSet that owns pod podName
// (this member's) and the group's record (creating it for a new group),
// and plans this member's start (planStart).
func (d *Discovery) Plan(ctx context.Context, spec replication.Spec, podName, selfAddr string) (StartPlan, error) {
	list, err := d.Client.ListPods(ctx, spec.Namespace, replicateSelector)
	if err != nil {
		return StartPlan{}, fmt.Errorf("list pods of group %s: %w", spec.GroupKey(), err)
	}
	var sts *appsv1.StatefulSet
	var rec *groupRecord
	for i := range list.Items {
		if pod := &list.Items[i]; pod.Name == podName {
			if name := ownerStatefulSet(pod); name != "" {
				if sts, err = d.Client.GetStatefulSet(ctx, spec.Namespace, name); err != nil {
					return StartPlan{}, fmt.Errorf("group %s: the size of the group is its StatefulSet's: %w", spec.GroupKey(), err)
				}
				r, err := d.ensureRecord(ctx, spec.GroupKey(), sts, stsSize(sts))
				if err != nil {
					return StartPlan{}, err
				}
				rec = &r
			}
		}
	}
	return planStart(list.Items, sts, rec, spec, selfAddr), nil
}

// Peers lists the group's pods and returns the initial membership of a
// member whose pod is podName.
func (d *Discovery) Peers(ctx context.Context, spec replication.Spec, podName, selfAddr string) (map[uint64]string, error) {
	p, err := d.Plan(ctx, spec, podName, selfAddr)
	return p.Peers, err
}

// WatchSize calls setSize with spec.replicas of StatefulSet ns/name now and
// at every change, until ctx ends. It returns once the first list is
// synced.
func (d *Discovery) WatchSize(ctx context.Context, ns, name string, setSize func(uint64)) error {
	inf := cache.NewSharedIndexInformer(d.Client.StatefulSetListWatch(ns, name), &appsv1.StatefulSet{}, 0, cache.Indexers{})
	handle := func(obj any) {
		sts, ok := obj.(*appsv1.StatefulSet)
		if !ok || sts.Name != name {
			return
		}
		setSize(stsSize(sts))
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    handle,
		UpdateFunc: func(_, obj any) { handle(obj) },
	}); err != nil {
		return fmt.Errorf("watch statefulset %s/%s: %w", ns, name, err)
	}
	go inf.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("watch statefulset %s/%s: %w", ns, name, errors.Join(ctx.Err(), errors.New("cache not synced")))
	}
	return nil
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
