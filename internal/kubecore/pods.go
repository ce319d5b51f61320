package kubecore

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// GetPod reads the pod ns/name. Errors keep the API server's status
// (apierrors.IsNotFound works on them).
func (c *Client) GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	if ns == "" || name == "" {
		return nil, fmt.Errorf("get pod %q/%q: namespace and name must be set", ns, name)
	}
	pod := &corev1.Pod{}
	if err := c.rest.Get().Namespace(ns).Resource("pods").Name(name).Do(ctx).Into(pod); err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", ns, name, err)
	}
	return pod, nil
}

// PatchPodStatus applies a strategic merge patch to the status of the pod
// ns/name (pods/status: a readiness gate's condition, as kubelet patches its
// own). A patch carrying metadata.uid only applies to that pod: a pod of
// the same name created since fails with a conflict. Errors keep the API
// server's status.
func (c *Client) PatchPodStatus(ctx context.Context, ns, name string, patch []byte) (*corev1.Pod, error) {
	if ns == "" || name == "" {
		return nil, fmt.Errorf("patch pod status %q/%q: namespace and name must be set", ns, name)
	}
	out := &corev1.Pod{}
	if err := c.rest.Patch(types.StrategicMergePatchType).Namespace(ns).Resource("pods").Name(name).
		SubResource("status").Body(patch).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("patch status of pod %s/%s: %w", ns, name, err)
	}
	return out, nil
}
