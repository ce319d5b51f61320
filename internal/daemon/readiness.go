package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/smr-io/smr-cri/internal/kubecore"
	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/replication"
)

// podStatusClient is what the readiness publisher needs from the API
// server (kubecore.Client): the pod's readiness gates, and a patch of its
// status (RBAC: get pods, patch pods/status; see docs/security.md).
type podStatusClient interface {
	GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error)
	PatchPodStatus(ctx context.Context, ns, name string, patch []byte) (*corev1.Pod, error)
}

var _ podStatusClient = (*kubecore.Client)(nil)

// readinessPublisher sets the smr.io/replica-serving condition of replica
// pods that list it in spec.readinessGates; pods without the gate are left
// alone (kubelet's readiness as before), and so is everything without an
// API server (static membership, no --kubeconfig).
type readinessPublisher struct {
	// client returns the API client, loaded lazily like discovery's
	// (nil, nil: serve runs without an API server).
	client func() (podStatusClient, error)
	now    func() time.Time

	mu    sync.Mutex
	gated map[types.UID]bool // pods already looked at, by UID
}

// newReadinessPublisher publishes through the daemon's API client.
func newReadinessPublisher(d *Daemon) *readinessPublisher {
	return &readinessPublisher{now: time.Now, client: func() (podStatusClient, error) {
		if d.cfg.Kube == nil && d.cfg.Kubeconfig == "" {
			return nil, nil
		}
		disc, err := d.discovery()
		if err != nil {
			return nil, err
		}
		return disc.Client, nil
	}}
}

// PublishReadiness implements replication.ReadinessPublisher.
func (p *readinessPublisher) PublishReadiness(ctx context.Context, pod podevents.Pod, r replication.Readiness) error {
	c, err := p.client()
	if err != nil {
		return fmt.Errorf("readiness of pod %s: %w", pod, err)
	}
	if c == nil {
		return replication.ErrReadinessNotWanted
	}
	gated, err := p.wantsCondition(ctx, c, pod)
	if err != nil || !gated {
		return err
	}
	patch, err := readinessPatch(pod, r, p.now())
	if err != nil {
		return err
	}
	if _, err := c.PatchPodStatus(ctx, pod.Namespace, pod.Name, patch); err != nil {
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return fmt.Errorf("%w: pod %s is gone or was replaced: %v", replication.ErrReadinessNotWanted, pod, err)
		}
		return err
	}
	return nil
}

// wantsCondition reports (once per pod UID) whether the pod lists the
// condition in its readiness gates.
func (p *readinessPublisher) wantsCondition(ctx context.Context, c podStatusClient, pod podevents.Pod) (bool, error) {
	uid := types.UID(pod.UID)
	p.mu.Lock()
	gated, known := p.gated[uid]
	p.mu.Unlock()
	if known {
		if !gated {
			return false, replication.ErrReadinessNotWanted
		}
		return true, nil
	}
	got, err := c.GetPod(ctx, pod.Namespace, pod.Name)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return false, fmt.Errorf("%w: pod %s not found: %v", replication.ErrReadinessNotWanted, pod, err)
		}
		return false, err
	}
	if pod.UID != "" && got.UID != uid {
		return false, fmt.Errorf("%w: pod %s was replaced (uid %s, this replica's is %s)", replication.ErrReadinessNotWanted, pod, got.UID, pod.UID)
	}
	gated = hasReadinessGate(got)
	p.mu.Lock()
	if p.gated == nil {
		p.gated = map[types.UID]bool{}
	}
	if len(p.gated) > 4096 { // pods come and go: a bound, not an exact cache
		clear(p.gated)
	}
	p.gated[uid] = gated
	p.mu.Unlock()
	if !gated {
		return false, replication.ErrReadinessNotWanted
	}
	return true, nil
}

func hasReadinessGate(pod *corev1.Pod) bool {
	for _, g := range pod.Spec.ReadinessGates {
		if g.ConditionType == replication.ConditionReplicaServing {
			return true
		}
	}
	return false
}

// readinessPatch is the strategic merge patch of the pod's status: the
// condition (merged by type with the pod's other conditions) and the pod's
// UID as a precondition, as kubelet's own status patches carry it.
func readinessPatch(pod podevents.Pod, r replication.Readiness, now time.Time) ([]byte, error) {
	status := corev1.ConditionFalse
	if r.Serving {
		status = corev1.ConditionTrue
	}
	// Built field by field: a marshalled corev1.Pod would carry zero
	// values (creationTimestamp: null) that a merge patch would apply.
	patch := map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status": map[string]any{"conditions": []map[string]any{{
			"type": replication.ConditionReplicaServing, "status": status, "reason": r.Reason, "message": r.Message,
			"lastTransitionTime": metav1.NewTime(now.Truncate(time.Second)),
		}}},
	}
	if pod.UID == "" {
		delete(patch, "metadata")
	}
	b, err := json.Marshal(patch)
	if err != nil {
		return nil, fmt.Errorf("readiness patch of pod %s: %w", pod, err)
	}
	return b, nil
}
