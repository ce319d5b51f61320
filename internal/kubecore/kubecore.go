// Package kubecore is the daemon's Kubernetes API client: a REST client for
// the core/v1 group only (pods for membership discovery, the CA Secret, events).
//
// It exists instead of client-go's typed clientset (k8s.io/client-go/kubernetes)
// because importing that package registers every API group's types in a
// global scheme at process start: about 16 MiB of the node daemon's idle
// resident memory, paid even by nodes that never talk to an API server.
// Here the scheme holds core/v1 and meta/v1 only and is built at the first
// client, so `smr-cri serve` without --kubeconfig pays nothing for it.
package kubecore

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// UserAgent is sent with every request (shows in the API server's audit log).
const UserAgent = "smr-cri"

// Scheme holds the core/v1 types (and meta/v1's options and Status). Built
// once, at first use.
var Scheme = sync.OnceValue(func() *runtime.Scheme {
	s := runtime.NewScheme()
	// AddToScheme also registers metav1's ListOptions, WatchEvent, Status...
	// for core/v1, what the parameter codec and the decoder need.
	if err := corev1.AddToScheme(s); err != nil {
		panic(fmt.Sprintf("kubecore: register core/v1: %v", err)) // static input: a bug, not bad input
	}
	return s
})

// Client calls the core/v1 API of one API server.
type Client struct {
	rest rest.Interface
}

// NewForConfig returns a core/v1 client for cfg (which is not modified).
func NewForConfig(cfg *rest.Config) (*Client, error) {
	if cfg == nil {
		return nil, errors.New("kubecore: nil rest config")
	}
	c := rest.CopyConfig(cfg)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(Scheme()).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = UserAgent
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubecore: core/v1 client for %s: %w", cfg.Host, err)
	}
	return &Client{rest: rc}, nil
}

// FromKubeconfig returns a core/v1 client for the current context of a
// kubeconfig file.
func FromKubeconfig(path string) (*Client, error) {
	if path == "" {
		return nil, errors.New("kubecore: empty kubeconfig path")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	cfg.UserAgent = UserAgent
	return NewForConfig(cfg)
}

// ListPods lists the pods of namespace ns ("" for all) matching the label
// selector ("" for all).
func (c *Client) ListPods(ctx context.Context, ns, labelSelector string) (*corev1.PodList, error) {
	list := &corev1.PodList{}
	err := c.rest.Get().Namespace(ns).Resource("pods").
		VersionedParams(&metav1.ListOptions{LabelSelector: labelSelector}, metav1.ParameterCodec).
		Do(ctx).Into(list)
	if err != nil {
		return nil, fmt.Errorf("list pods in namespace %q (selector %q): %w", ns, labelSelector, err)
	}
	return list, nil
}

// PodListWatch lists and watches the pods of namespace ns matching the
// label selector, for an informer (cache.NewSharedIndexInformer).
func (c *Client) PodListWatch(ns, labelSelector string) cache.ListerWatcher {
	return cache.NewFilteredListWatchFromClient(c.rest, "pods", ns, func(o *metav1.ListOptions) {
		o.LabelSelector = labelSelector
	})
}

// GetSecret reads the Secret ns/name. Errors keep the API server's status
// (apierrors.IsNotFound works on them).
func (c *Client) GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	if ns == "" || name == "" {
		return nil, fmt.Errorf("get secret %q/%q: namespace and name must be set", ns, name)
	}
	sec := &corev1.Secret{}
	if err := c.rest.Get().Namespace(ns).Resource("secrets").Name(name).Do(ctx).Into(sec); err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", ns, name, err)
	}
	return sec, nil
}

// CreateSecret creates sec in its namespace and returns what the API server
// stored. Errors keep the API server's status (apierrors.IsAlreadyExists).
func (c *Client) CreateSecret(ctx context.Context, sec *corev1.Secret) (*corev1.Secret, error) {
	if sec == nil || sec.Namespace == "" || sec.Name == "" {
		return nil, errors.New("create secret: namespace and name must be set")
	}
	out := &corev1.Secret{}
	if err := c.rest.Post().Namespace(sec.Namespace).Resource("secrets").Body(sec).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("create secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	return out, nil
}

// CreateEvent creates ev in its namespace (the involved object's) and
// returns what the API server stored.
func (c *Client) CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	if ev == nil || ev.Namespace == "" {
		return nil, errors.New("create event: namespace must be set")
	}
	out := &corev1.Event{}
	if err := c.rest.Post().Namespace(ev.Namespace).Resource("events").Body(ev).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("create event %s/%s: %w", ev.Namespace, ev.Name, err)
	}
	return out, nil
}

// PatchEvent applies a strategic merge patch to the event ns/name (a
// repeated event's count and last timestamp, as client-go's recorder does).
// Errors keep the API server's status (apierrors.IsNotFound: the event
// expired, create a new one).
func (c *Client) PatchEvent(ctx context.Context, ns, name string, patch []byte) (*corev1.Event, error) {
	if ns == "" || name == "" {
		return nil, fmt.Errorf("patch event %q/%q: namespace and name must be set", ns, name)
	}
	out := &corev1.Event{}
	if err := c.rest.Patch(types.StrategicMergePatchType).Namespace(ns).Resource("events").Name(name).
		Body(patch).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("patch event %s/%s: %w", ns, name, err)
	}
	return out, nil
}

// ListEvents lists the events of namespace ns matching a field selector
// ("" for all), e.g. involvedObject.name=redis-1.
func (c *Client) ListEvents(ctx context.Context, ns, fieldSelector string) (*corev1.EventList, error) {
	list := &corev1.EventList{}
	err := c.rest.Get().Namespace(ns).Resource("events").
		VersionedParams(&metav1.ListOptions{FieldSelector: fieldSelector}, metav1.ParameterCodec).
		Do(ctx).Into(list)
	if err != nil {
		return nil, fmt.Errorf("list events in namespace %q (fields %q): %w", ns, fieldSelector, err)
	}
	return list, nil
}

// ExecRequest is the request of a command run in a pod's container
// (pods/exec), for a streaming executor such as client-go's remotecommand:
// this package does not import one, so `serve` does not carry it.
func (c *Client) ExecRequest(ns, pod string, opts *corev1.PodExecOptions) *rest.Request {
	return c.rest.Post().Namespace(ns).Resource("pods").Name(pod).SubResource("exec").
		VersionedParams(opts, runtime.NewParameterCodec(Scheme()))
}
