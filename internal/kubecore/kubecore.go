// Package kubecore is the daemon's Kubernetes API client: REST clients for
// the core/v1 group (pods for membership discovery, the CA Secret, events,
// the group records in smr-system's ConfigMaps)
// and apps/v1 StatefulSets (a group's size is its StatefulSet's
// spec.replicas), nothing else.
//
// It exists instead of client-go's typed clientset (k8s.io/client-go/kubernetes)
// because importing that package registers every API group's types in a
// global scheme at process start: about 16 MiB of the node daemon's idle
// resident memory, paid even by nodes that never talk to an API server.
// Here the scheme holds core/v1, apps/v1 and meta/v1 only and is built at the first
// client, so `smr-cri serve` without --kubeconfig pays nothing for it.
package kubecore

import (
	"context"
	"errors"
	"fmt"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// UserAgent is sent with every request (shows in the API server's audit log).
const UserAgent = "smr-cri"

// Scheme holds the core/v1 and apps/v1 types (and meta/v1's options and
// Status). Built once, at first use.
var Scheme = sync.OnceValue(func() *runtime.Scheme {
	s := runtime.NewScheme()
	// AddToScheme also registers metav1's ListOptions, WatchEvent, Status...
	// for core/v1, what the parameter codec and the decoder need.
	if err := corev1.AddToScheme(s); err != nil {
		panic(fmt.Sprintf("kubecore: register core/v1: %v", err)) // static input: a bug, not bad input
	}
	if err := appsv1.AddToScheme(s); err != nil {
		panic(fmt.Sprintf("kubecore: register apps/v1: %v", err))
	}
	return s
})

// Client calls the core/v1 and apps/v1 APIs of one API server.
type Client struct {
	rest rest.Interface // core/v1
	apps rest.Interface // apps/v1
}

// NewForConfig returns a core/v1 client for cfg (which is not modified).
func NewForConfig(cfg *rest.Config) (*Client, error) {
	if cfg == nil {
		return nil, errors.New("kubecore: nil rest config")
	}
	core, err := restClient(cfg, "/api", corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	apps, err := restClient(cfg, "/apis", appsv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return &Client{rest: core, apps: apps}, nil
}

func restClient(cfg *rest.Config, apiPath string, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.APIPath = apiPath
	c.GroupVersion = &gv
	c.NegotiatedSerializer = serializer.NewCodecFactory(Scheme()).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = UserAgent
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubecore: %s client for %s: %w", gv, cfg.Host, err)
	}
	return rc, nil
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

// GetStatefulSet reads the StatefulSet ns/name. Errors keep the API
// server's status (apierrors.IsNotFound works on them).
func (c *Client) GetStatefulSet(ctx context.Context, ns, name string) (*appsv1.StatefulSet, error) {
	if ns == "" || name == "" {
		return nil, fmt.Errorf("get statefulset %q/%q: namespace and name must be set", ns, name)
	}
	sts := &appsv1.StatefulSet{}
	if err := c.apps.Get().Namespace(ns).Resource("statefulsets").Name(name).Do(ctx).Into(sts); err != nil {
		return nil, fmt.Errorf("get statefulset %s/%s: %w", ns, name, err)
	}
	return sts, nil
}

// StatefulSetListWatch lists and watches the one StatefulSet ns/name, for
// an informer.
func (c *Client) StatefulSetListWatch(ns, name string) cache.ListerWatcher {
	return cache.NewListWatchFromClient(c.apps, "statefulsets", ns, fields.OneTermEqualSelector("metadata.name", name))
}

// GetConfigMap reads the ConfigMap ns/name. Errors keep the API server's
// status (apierrors.IsNotFound works on them).
func (c *Client) GetConfigMap(ctx context.Context, ns, name string) (*corev1.ConfigMap, error) {
	if ns == "" || name == "" {
		return nil, fmt.Errorf("get configmap %q/%q: namespace and name must be set", ns, name)
	}
	cm := &corev1.ConfigMap{}
	if err := c.rest.Get().Namespace(ns).Resource("configmaps").Name(name).Do(ctx).Into(cm); err != nil {
		return nil, fmt.Errorf("get configmap %s/%s: %w", ns, name, err)
	}
	return cm, nil
}

// CreateConfigMap creates cm in its namespace and returns what the API
// server stored. Errors keep the API server's status
// (apierrors.IsAlreadyExists).
func (c *Client) CreateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	if cm == nil || cm.Namespace == "" || cm.Name == "" {
		return nil, errors.New("create configmap: namespace and name must be set")
	}
	out := &corev1.ConfigMap{}
	if err := c.rest.Post().Namespace(cm.Namespace).Resource("configmaps").Body(cm).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("create configmap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return out, nil
}

// UpdateConfigMap replaces cm, which must carry the resourceVersion it was
// read at: a concurrent change fails with the API server's Conflict
// (apierrors.IsConflict), and the caller reads again.
func (c *Client) UpdateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	if cm == nil || cm.Namespace == "" || cm.Name == "" || cm.ResourceVersion == "" {
		return nil, errors.New("update configmap: namespace, name and resourceVersion must be set")
	}
	out := &corev1.ConfigMap{}
	if err := c.rest.Put().Namespace(cm.Namespace).Resource("configmaps").Name(cm.Name).Body(cm).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("update configmap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return out, nil
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
