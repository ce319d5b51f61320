// Package kubecoretest serves the part of the Kubernetes API that kubecore
// uses (pods: list and watch by label selector, get, strategic merge patch
// of the status; statefulsets: get, and list and watch of one by name;
// configmaps: get, create, update with resourceVersion conflicts; secrets: get and
// create; events: create, strategic merge patch of count/lastTimestamp/message,
// list) over HTTP from an in-memory object tracker, so that tests run the
// real REST client, its encoding and its error statuses end to end without
// an API server process.
package kubecoretest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/smr-io/smr-cri/internal/kubecore"
)

var (
	podsGVR    = corev1.SchemeGroupVersion.WithResource("pods")
	secretsGVR = corev1.SchemeGroupVersion.WithResource("secrets")
	eventsGVR  = corev1.SchemeGroupVersion.WithResource("events")
	configsGVR = corev1.SchemeGroupVersion.WithResource("configmaps")

	statefulSetsGVR = appsv1.SchemeGroupVersion.WithResource("statefulsets")
)

// Server is a fake API server for core/v1 pods and secrets.
type Server struct {
	// Tracker holds the objects: change pods through it to drive watches.
	Tracker k8stesting.ObjectTracker
	URL     string

	mu   sync.Mutex
	fail func(r *http.Request) error
	// watching counts open watch streams (see WaitWatching).
	watching atomic.Int32
	cmMu     sync.Mutex // ConfigMap writes: compare-and-swap of resourceVersion
	rv       atomic.Int64
}

// New starts a server holding objs; it stops when the test ends.
func New(t testing.TB, objs ...runtime.Object) *Server {
	t.Helper()
	s := &Server{Tracker: k8stesting.NewObjectTracker(kubecore.Scheme(),
		serializer.NewCodecFactory(kubecore.Scheme()).UniversalDecoder())}
	for _, o := range objs {
		if err := s.Tracker.Add(o); err != nil {
			t.Fatalf("kubecoretest: add %T: %v", o, err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/pods", s.pods)
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/pods/{name}", s.getPod)
	mux.HandleFunc("PATCH /api/v1/namespaces/{ns}/pods/{name}/status", s.patchPodStatus)
	mux.HandleFunc("GET /apis/apps/v1/namespaces/{ns}/statefulsets", s.statefulSets)
	mux.HandleFunc("GET /apis/apps/v1/namespaces/{ns}/statefulsets/{name}", s.getStatefulSet)
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/configmaps/{name}", s.getConfigMap)
	mux.HandleFunc("POST /api/v1/namespaces/{ns}/configmaps", s.createConfigMap)
	mux.HandleFunc("PUT /api/v1/namespaces/{ns}/configmaps/{name}", s.updateConfigMap)
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/secrets/{name}", s.getSecret)
	mux.HandleFunc("POST /api/v1/namespaces/{ns}/secrets", s.createSecret)
	mux.HandleFunc("POST /api/v1/namespaces/{ns}/events", s.createEvent)
	mux.HandleFunc("PATCH /api/v1/namespaces/{ns}/events/{name}", s.patchEvent)
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/events", s.listEvents)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, apierrors.NewNotFound(corev1.Resource(r.URL.Path), ""))
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		fail := s.fail
		s.mu.Unlock()
		if fail != nil {
			if err := fail(r); err != nil {
				writeStatus(w, err)
				return
			}
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// Client returns a kubecore client for this server.
func (s *Server) Client(t testing.TB) *kubecore.Client {
	t.Helper()
	c, err := kubecore.NewForConfig(&rest.Config{Host: s.URL})
	if err != nil {
		t.Fatalf("kubecoretest: client: %v", err)
	}
	return c
}

// FailWith makes every request for which f returns an error answer with
// that error's API status (an apierrors.StatusError), e.g. Forbidden.
func (s *Server) FailWith(f func(r *http.Request) error) {
	s.mu.Lock()
	s.fail = f
	s.mu.Unlock()
}

// Watching reports how many watch streams are open: a test waits for the
// informer's watch before changing pods, since this fake (unlike an API
// server) cannot replay changes made between a list and a watch.
func (s *Server) Watching() int { return int(s.watching.Load()) }

func (s *Server) pods(w http.ResponseWriter, r *http.Request) {
	ns, q := r.PathValue("ns"), r.URL.Query()
	sel, err := labels.Parse(q.Get("labelSelector"))
	if err != nil {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("labelSelector: %v", err)))
		return
	}
	if q.Get("watch") == "true" || q.Get("watch") == "1" {
		s.watchPods(w, r, ns, sel, q.Get("sendInitialEvents") == "true")
		return
	}
	list, err := s.listPods(ns, sel)
	if err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) listPods(ns string, sel labels.Selector) (*corev1.PodList, error) {
	obj, err := s.Tracker.List(podsGVR, corev1.SchemeGroupVersion.WithKind("Pod"), ns)
	if err != nil {
		return nil, err
	}
	all, ok := obj.(*corev1.PodList)
	if !ok {
		return nil, fmt.Errorf("tracker listed %T, want *PodList", obj)
	}
	list := &corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
		ListMeta: metav1.ListMeta{ResourceVersion: s.nextRV()}}
	for _, p := range all.Items {
		if sel.Matches(labels.Set(p.Labels)) {
			list.Items = append(list.Items, p)
		}
	}
	return list, nil
}

// watchPods streams the pods matching sel (see watch).
func (s *Server) watchPods(w http.ResponseWriter, r *http.Request, ns string, sel labels.Selector, initial bool) {
	s.watch(w, r, podsGVR, ns, initial, func() ([]runtime.Object, error) {
		list, err := s.listPods(ns, sel)
		if err != nil {
			return nil, err
		}
		out := make([]runtime.Object, len(list.Items))
		for i := range list.Items {
			out[i] = withPodType(&list.Items[i])
		}
		return out, nil
	}, func(obj runtime.Object) (runtime.Object, bool) {
		p, ok := obj.(*corev1.Pod)
		if !ok || !sel.Matches(labels.Set(p.Labels)) {
			return nil, false
		}
		return withPodType(p), true
	}, &corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"}})
}

// watch streams watch events of gvr in ns as JSON objects: keep filters
// and types the tracker's events. With sendInitialEvents (client-go's
// WatchList) the current objects (list) come first as ADDED, then a
// bookmark (mark, a typed empty object) that ends the initial events.
func (s *Server) watch(w http.ResponseWriter, r *http.Request, gvr schema.GroupVersionResource, ns string, initial bool,
	list func() ([]runtime.Object, error), keep func(runtime.Object) (runtime.Object, bool), mark metav1.Object) {
	wi, err := s.Tracker.Watch(gvr, ns)
	if err != nil {
		writeStatus(w, err)
		return
	}
	defer wi.Stop()
	s.watching.Add(1)
	defer s.watching.Add(-1)
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(typ watch.EventType, obj runtime.Object) error {
		raw, err := json.Marshal(obj)
		if err != nil {
			return err
		}
		if err := enc.Encode(metav1.WatchEvent{Type: string(typ), Object: runtime.RawExtension{Raw: raw}}); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	}
	if initial {
		objs, err := list()
		if err != nil {
			return
		}
		for _, o := range objs {
			if send(watch.Added, o) != nil {
				return
			}
		}
		mark.SetResourceVersion(s.nextRV())
		mark.SetAnnotations(map[string]string{metav1.InitialEventsAnnotationKey: "true"})
		if send(watch.Bookmark, mark.(runtime.Object)) != nil {
			return
		}
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-wi.ResultChan():
			if !ok {
				return
			}
			o, ok := keep(ev.Object)
			if !ok {
				continue
			}
			if send(ev.Type, o) != nil {
				return
			}
		}
	}
}

// statefulSets lists or watches the StatefulSets of a namespace, all or
// the one a metadata.name field selector names (what an informer on one
// StatefulSet asks).
func (s *Server) statefulSets(w http.ResponseWriter, r *http.Request) {
	ns, q := r.PathValue("ns"), r.URL.Query()
	name := ""
	if sel := q.Get("fieldSelector"); sel != "" {
		n, ok := strings.CutPrefix(sel, "metadata.name=")
		if !ok || strings.ContainsAny(n, ",=!") {
			writeStatus(w, apierrors.NewBadRequest("this fake supports only the field selector metadata.name=NAME, got "+sel))
			return
		}
		name = n
	}
	keep := func(obj runtime.Object) (runtime.Object, bool) {
		sts, ok := obj.(*appsv1.StatefulSet)
		if !ok || (name != "" && sts.Name != name) {
			return nil, false
		}
		return withStatefulSetType(sts), true
	}
	list := func() ([]runtime.Object, error) {
		obj, err := s.Tracker.List(statefulSetsGVR, appsv1.SchemeGroupVersion.WithKind("StatefulSet"), ns)
		if err != nil {
			return nil, err
		}
		var out []runtime.Object
		for i := range obj.(*appsv1.StatefulSetList).Items {
			if o, ok := keep(&obj.(*appsv1.StatefulSetList).Items[i]); ok {
				out = append(out, o)
			}
		}
		return out, nil
	}
	if q.Get("watch") == "true" || q.Get("watch") == "1" {
		s.watch(w, r, statefulSetsGVR, ns, q.Get("sendInitialEvents") == "true", list, keep,
			&appsv1.StatefulSet{TypeMeta: metav1.TypeMeta{Kind: "StatefulSet", APIVersion: "apps/v1"}})
		return
	}
	objs, err := list()
	if err != nil {
		writeStatus(w, err)
		return
	}
	out := &appsv1.StatefulSetList{TypeMeta: metav1.TypeMeta{Kind: "StatefulSetList", APIVersion: "apps/v1"},
		ListMeta: metav1.ListMeta{ResourceVersion: s.nextRV()}}
	for _, o := range objs {
		out.Items = append(out.Items, *o.(*appsv1.StatefulSet))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getStatefulSet(w http.ResponseWriter, r *http.Request) {
	obj, err := s.Tracker.Get(statefulSetsGVR, r.PathValue("ns"), r.PathValue("name"))
	if err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, withStatefulSetType(obj.(*appsv1.StatefulSet)))
}

func withStatefulSetType(sts *appsv1.StatefulSet) *appsv1.StatefulSet {
	sts = sts.DeepCopy()
	sts.TypeMeta = metav1.TypeMeta{Kind: "StatefulSet", APIVersion: "apps/v1"}
	return sts
}

func (s *Server) getConfigMap(w http.ResponseWriter, r *http.Request) {
	obj, err := s.Tracker.Get(configsGVR, r.PathValue("ns"), r.PathValue("name"))
	if err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, withConfigMapType(obj.(*corev1.ConfigMap)))
}

// decodeConfigMap reads a v1 ConfigMap body for namespace ns.
func decodeConfigMap(r *http.Request) (*corev1.ConfigMap, error) {
	cm := &corev1.ConfigMap{}
	if err := json.NewDecoder(r.Body).Decode(cm); err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("decode configmap: %v", err))
	}
	if cm.Kind != "ConfigMap" || cm.APIVersion != "v1" {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("body is %s %s, want v1 ConfigMap", cm.APIVersion, cm.Kind))
	}
	if cm.Namespace != "" && cm.Namespace != r.PathValue("ns") {
		return nil, apierrors.NewBadRequest("namespace of the body does not match the URL")
	}
	cm.Namespace = r.PathValue("ns")
	for k := range cm.Data {
		if !configKeyRE.MatchString(k) {
			// The API server's validation, which an in-memory tracker skips.
			return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("ConfigMap").GroupKind(), cm.Name,
				field.ErrorList{field.Invalid(field.NewPath("data").Key(k), k, "a valid config key must match [-._a-zA-Z0-9]+")})
		}
	}
	return cm, nil
}

var configKeyRE = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)

func (s *Server) createConfigMap(w http.ResponseWriter, r *http.Request) {
	s.cmMu.Lock()
	defer s.cmMu.Unlock()
	cm, err := decodeConfigMap(r)
	if err != nil {
		writeStatus(w, err)
		return
	}
	cm.ResourceVersion = s.nextRV()
	if err := s.Tracker.Create(configsGVR, cm, cm.Namespace); err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, withConfigMapType(cm))
}

// updateConfigMap replaces a ConfigMap if the body's resourceVersion is the
// stored one (409 Conflict otherwise), as an API server does.
func (s *Server) updateConfigMap(w http.ResponseWriter, r *http.Request) {
	s.cmMu.Lock()
	defer s.cmMu.Unlock()
	cm, err := decodeConfigMap(r)
	if err != nil {
		writeStatus(w, err)
		return
	}
	if cm.Name != r.PathValue("name") {
		writeStatus(w, apierrors.NewBadRequest("name of the body does not match the URL"))
		return
	}
	old, err := s.Tracker.Get(configsGVR, cm.Namespace, cm.Name)
	if err != nil {
		writeStatus(w, err)
		return
	}
	if rv := old.(*corev1.ConfigMap).ResourceVersion; cm.ResourceVersion != rv {
		writeStatus(w, apierrors.NewConflict(corev1.Resource("configmaps"), cm.Name,
			fmt.Errorf("resourceVersion %q is not the stored %q", cm.ResourceVersion, rv)))
		return
	}
	cm.ResourceVersion = s.nextRV()
	if err := s.Tracker.Update(configsGVR, cm, cm.Namespace); err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, withConfigMapType(cm))
}

func withConfigMapType(cm *corev1.ConfigMap) *corev1.ConfigMap {
	cm = cm.DeepCopy()
	cm.TypeMeta = metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"}
	return cm
}

func (s *Server) getSecret(w http.ResponseWriter, r *http.Request) {
	obj, err := s.Tracker.Get(secretsGVR, r.PathValue("ns"), r.PathValue("name"))
	if err != nil {
		writeStatus(w, err)
		return
	}
	sec := obj.(*corev1.Secret).DeepCopy()
	sec.TypeMeta = metav1.TypeMeta{Kind: "Secret", APIVersion: "v1"}
	writeJSON(w, http.StatusOK, sec)
}

func (s *Server) createSecret(w http.ResponseWriter, r *http.Request) {
	sec := &corev1.Secret{}
	if err := json.NewDecoder(r.Body).Decode(sec); err != nil {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("decode secret: %v", err)))
		return
	}
	// An API server rejects a body of another kind, as this does.
	if sec.Kind != "Secret" || sec.APIVersion != "v1" {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("body is %s %s, want v1 Secret", sec.APIVersion, sec.Kind)))
		return
	}
	if sec.Namespace != "" && sec.Namespace != r.PathValue("ns") {
		writeStatus(w, apierrors.NewBadRequest("namespace of the body does not match the URL"))
		return
	}
	sec.Namespace = r.PathValue("ns")
	if err := s.Tracker.Create(secretsGVR, sec, sec.Namespace); err != nil {
		writeStatus(w, err)
		return
	}
	sec.TypeMeta = metav1.TypeMeta{Kind: "Secret", APIVersion: "v1"}
	writeJSON(w, http.StatusCreated, sec)
}

func (s *Server) createEvent(w http.ResponseWriter, r *http.Request) {
	ev := &corev1.Event{}
	if err := json.NewDecoder(r.Body).Decode(ev); err != nil {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("decode event: %v", err)))
		return
	}
	if ev.Kind != "Event" || ev.APIVersion != "v1" {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("body is %s %s, want v1 Event", ev.APIVersion, ev.Kind)))
		return
	}
	if ev.Namespace != r.PathValue("ns") || ev.InvolvedObject.Namespace != ev.Namespace {
		// The API server requires the event in its object's namespace.
		writeStatus(w, apierrors.NewBadRequest("event namespace must match the URL and the involved object"))
		return
	}
	if ev.Name == "" || ev.Reason == "" {
		writeStatus(w, apierrors.NewBadRequest("event name and reason are required"))
		return
	}
	if err := s.Tracker.Create(eventsGVR, ev, ev.Namespace); err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, withEventType(ev))
}

func (s *Server) getPod(w http.ResponseWriter, r *http.Request) {
	obj, err := s.Tracker.Get(podsGVR, r.PathValue("ns"), r.PathValue("name"))
	if err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, withPodType(obj.(*corev1.Pod)))
}

// patchPodStatus applies a strategic merge patch (apimachinery's, as the
// API server does) to a pod's status only; a metadata.uid in the patch is a
// precondition (a conflict when it names another pod), as in an API server.
func (s *Server) patchPodStatus(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "application/strategic-merge-patch+json" {
		writeStatus(w, apierrors.NewBadRequest("want a strategic merge patch, got "+ct))
		return
	}
	patch, err := io.ReadAll(r.Body)
	if err != nil {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("read patch: %v", err)))
		return
	}
	ns, name := r.PathValue("ns"), r.PathValue("name")
	obj, err := s.Tracker.Get(podsGVR, ns, name)
	if err != nil {
		writeStatus(w, err)
		return
	}
	pod := obj.(*corev1.Pod)
	var pre struct {
		Metadata struct {
			UID types.UID `json:"uid"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(patch, &pre); err != nil {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("decode patch: %v", err)))
		return
	}
	if pre.Metadata.UID != "" && pre.Metadata.UID != pod.UID {
		writeStatus(w, apierrors.NewConflict(corev1.Resource("pods"), name,
			fmt.Errorf("precondition failed: UID in precondition: %s, UID in object meta: %s", pre.Metadata.UID, pod.UID)))
		return
	}
	cur, err := json.Marshal(pod)
	if err != nil {
		writeStatus(w, err)
		return
	}
	merged, err := strategicpatch.StrategicMergePatch(cur, patch, &corev1.Pod{})
	if err != nil {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("apply patch: %v", err)))
		return
	}
	var out corev1.Pod
	if err := json.Unmarshal(merged, &out); err != nil {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("patched pod: %v", err)))
		return
	}
	updated := pod.DeepCopy()
	updated.Status = out.Status // the status subresource changes nothing else
	updated.ResourceVersion = s.nextRV()
	if err := s.Tracker.Update(podsGVR, updated, ns); err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, withPodType(updated))
}

// Pod returns the stored pod ns/name.
func (s *Server) Pod(t testing.TB, ns, name string) *corev1.Pod {
	t.Helper()
	obj, err := s.Tracker.Get(podsGVR, ns, name)
	if err != nil {
		t.Fatalf("kubecoretest: get pod %s/%s: %v", ns, name, err)
	}
	return obj.(*corev1.Pod).DeepCopy()
}

// patchEvent applies the fields client-go's recorder patches on a repeat.
func (s *Server) patchEvent(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "application/strategic-merge-patch+json" {
		writeStatus(w, apierrors.NewBadRequest("want a strategic merge patch, got "+ct))
		return
	}
	var p struct {
		Count         *int32       `json:"count"`
		LastTimestamp *metav1.Time `json:"lastTimestamp"`
		Message       *string      `json:"message"`
	}
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("decode patch: %v", err)))
		return
	}
	obj, err := s.Tracker.Get(eventsGVR, r.PathValue("ns"), r.PathValue("name"))
	if err != nil {
		writeStatus(w, err)
		return
	}
	ev := obj.(*corev1.Event).DeepCopy()
	if p.Count != nil {
		ev.Count = *p.Count
	}
	if p.LastTimestamp != nil {
		ev.LastTimestamp = *p.LastTimestamp
	}
	if p.Message != nil {
		ev.Message = *p.Message
	}
	if err := s.Tracker.Update(eventsGVR, ev, ev.Namespace); err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, withEventType(ev))
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	obj, err := s.Tracker.List(eventsGVR, corev1.SchemeGroupVersion.WithKind("Event"), r.PathValue("ns"))
	if err != nil {
		writeStatus(w, err)
		return
	}
	list := obj.(*corev1.EventList).DeepCopy()
	list.TypeMeta = metav1.TypeMeta{Kind: "EventList", APIVersion: "v1"}
	if sel := r.URL.Query().Get("fieldSelector"); sel != "" {
		name, ok := strings.CutPrefix(sel, "involvedObject.name=")
		if !ok || strings.ContainsAny(name, ",=!") {
			writeStatus(w, apierrors.NewBadRequest("this fake supports only the field selector involvedObject.name=NAME, got "+sel))
			return
		}
		keep := list.Items[:0]
		for _, ev := range list.Items {
			if ev.InvolvedObject.Name == name {
				keep = append(keep, ev)
			}
		}
		list.Items = keep
	}
	writeJSON(w, http.StatusOK, list)
}

// Events returns the stored events of namespace ns.
func (s *Server) Events(t testing.TB, ns string) []corev1.Event {
	t.Helper()
	obj, err := s.Tracker.List(eventsGVR, corev1.SchemeGroupVersion.WithKind("Event"), ns)
	if err != nil {
		t.Fatalf("kubecoretest: list events: %v", err)
	}
	return obj.(*corev1.EventList).Items
}

func withEventType(ev *corev1.Event) *corev1.Event {
	ev = ev.DeepCopy()
	ev.TypeMeta = metav1.TypeMeta{Kind: "Event", APIVersion: "v1"}
	return ev
}

func (s *Server) nextRV() string { return strconv.FormatInt(s.rv.Add(1), 10) }

func withPodType(p *corev1.Pod) *corev1.Pod {
	p = p.DeepCopy()
	p.TypeMeta = metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"}
	return p
}

// writeStatus answers with err's API status (500 for other errors), the
// way an API server does.
func writeStatus(w http.ResponseWriter, err error) {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		st = apierrors.NewInternalError(err)
	}
	status := st.Status()
	status.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	writeJSON(w, int(status.Code), &status)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
