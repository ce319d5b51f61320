// Package podevents records Kubernetes Events on replica pods (what `kubectl
// describe pod` shows): a member attached, a leader elected, members added
// or removed, repairs, divergence, a broken contract.
//
// Recorder is the small interface the rest of smr-cri calls; Broadcaster
// implements it over the project's core/v1 client (internal/kubecore, not
// client-go's typed clientset: serve's idle memory). Like client-go's
// record.EventRecorder it never blocks the caller (events are queued and
// sent by one goroutine; a full queue drops the event and counts it),
// deduplicates (an event equal to one already sent, same object, type, reason
// and message, patches that event's count and lastTimestamp instead of
// creating another) and rate limits per object (a token bucket: a burst of
// 25, then one event every 5 minutes), with client-go's defaults.
package podevents

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Event types.
const (
	Normal  = corev1.EventTypeNormal
	Warning = corev1.EventTypeWarning
)

// Reasons smr-cri records (the REASON column of kubectl's events).
const (
	ReasonAttached           = "ReplicaAttached"
	ReasonAttachFailed       = "ReplicaAttachFailed"
	ReasonLeaderElected      = "LeaderElected"
	ReasonMemberAdded        = "MemberAdded"
	ReasonMemberRemoved      = "MemberRemoved"
	ReasonRepairStarted      = "RepairStarted"
	ReasonRepairFinished     = "RepairFinished"
	ReasonDivergenceDetected = "DivergenceDetected"
	ReasonContractError      = "ContractError"
)

// Pod names the pod an event is about. UID is what `kubectl describe pod`
// matches events on: set it whenever it is known (the CRI sandbox metadata
// carries it).
type Pod struct {
	Namespace, Name, UID string
}

func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// Recorder records an event on a pod. Implementations must not block and
// must accept any input (a bad event is dropped, never a panic).
type Recorder interface {
	Event(pod Pod, eventType, reason, message string)
}

// Eventf records a formatted message on r; a nil r records nothing, so
// callers need no check.
func Eventf(r Recorder, pod Pod, eventType, reason, format string, args ...any) {
	if r == nil {
		return
	}
	r.Event(pod, eventType, reason, fmt.Sprintf(format, args...))
}

// Discard records nothing.
type Discard struct{}

// Event implements Recorder.
func (Discard) Event(Pod, string, string, string) {}

// Sink is where events go: *kubecore.Client, or a function loading it
// lazily (the daemon's kubeconfig may appear after it started).
type Sink interface {
	CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error)
	PatchEvent(ctx context.Context, ns, name string, patch []byte) (*corev1.Event, error)
}

// Config configures a Broadcaster.
type Config struct {
	Sink Sink
	// Component and Host fill the event's source (kubectl shows
	// "FROM smr-cri, node1"); Host is the node name.
	Component, Host string
	Log             *slog.Logger
	// QueueSize bounds the events waiting to be sent (default 256).
	QueueSize int
	// Burst and Refill are the per-pod token bucket (default 25 and one
	// token every 5 minutes, as client-go).
	Burst  int
	Refill time.Duration
	// MaxKeys bounds the remembered events and buckets (default 4096).
	MaxKeys int
	// Timeout bounds one API call (default 10s).
	Timeout time.Duration
	// Now is the clock (tests).
	Now func() time.Time
}

// Defaults (client-go's tools/record).
const (
	DefaultQueueSize = 256
	DefaultBurst     = 25
	DefaultRefill    = 5 * time.Minute
	DefaultMaxKeys   = 4096
	DefaultTimeout   = 10 * time.Second
	// maxMessage is the API server's limit on an event's message.
	maxMessage = 1024
)

// Broadcaster sends events to the API server in the background.
type Broadcaster struct {
	cfg   Config
	queue chan *corev1.Event
	done  chan struct{}
	stop  context.CancelFunc

	mu     sync.RWMutex // guards closed against Event racing Close
	closed bool

	// dropped counts events lost to a full queue, the rate limit or API
	// errors (Stats).
	dropped, sent, patched atomic.Int64
	seq                    atomic.Uint64

	// Owned by the sending goroutine.
	seen    map[dedupKey]*seenEvent
	buckets map[string]*bucket
	order   []dedupKey // oldest first, to bound seen
}

type dedupKey struct {
	pod, uid, typ, reason, message string
}

type seenEvent struct {
	name, namespace string
	count           int32
	first           metav1.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New starts a Broadcaster; Close stops it.
func New(cfg Config) *Broadcaster {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.Refill <= 0 {
		cfg.Refill = DefaultRefill
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Component == "" {
		cfg.Component = "smr-cri"
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broadcaster{cfg: cfg, queue: make(chan *corev1.Event, cfg.QueueSize), done: make(chan struct{}), stop: cancel,
		seen: map[dedupKey]*seenEvent{}, buckets: map[string]*bucket{}}
	go b.run(ctx)
	return b
}

// Event implements Recorder: it queues the event and returns at once.
// Events without a pod name or namespace, or without a reason, are dropped
// (logged).
func (b *Broadcaster) Event(pod Pod, eventType, reason, message string) {
	if pod.Namespace == "" || pod.Name == "" || reason == "" {
		b.cfg.Log.Warn("event dropped: pod namespace, name and reason are required", "pod", pod.String(), "reason", reason)
		b.dropped.Add(1)
		return
	}
	if eventType != Normal && eventType != Warning {
		eventType = Warning
	}
	if len(message) > maxMessage {
		message = message[:maxMessage-3] + "..."
	}
	now := metav1.NewTime(b.cfg.Now())
	ev := &corev1.Event{
		TypeMeta: metav1.TypeMeta{Kind: "Event", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace,
			// client-go's name (object.hex nanoseconds) plus a sequence
			// number, so events within one clock tick do not collide.
			Name: fmt.Sprintf("%s.%x%04x", pod.Name, now.UnixNano(), b.seq.Add(1)&0xffff)},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name,
			UID: types.UID(pod.UID)},
		Reason: reason, Message: message, Type: eventType,
		Source:         corev1.EventSource{Component: b.cfg.Component, Host: b.cfg.Host},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "smr.io/" + b.cfg.Component, ReportingInstance: b.cfg.Component + "-" + b.cfg.Host,
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		b.dropped.Add(1)
		return
	}
	select {
	case b.queue <- ev:
	default:
		b.dropped.Add(1)
		b.cfg.Log.Warn("event dropped: queue full", "pod", pod.String(), "reason", reason)
	}
}

// Stats are the counts of events created, patched (repeats) and dropped.
type Stats struct{ Sent, Patched, Dropped int64 }

// Stats returns what the Broadcaster did so far.
func (b *Broadcaster) Stats() Stats {
	return Stats{Sent: b.sent.Load(), Patched: b.patched.Load(), Dropped: b.dropped.Load()}
}

// Close sends what is queued (within ctx) and stops.
func (b *Broadcaster) Close(ctx context.Context) {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.queue)
	}
	b.mu.Unlock()
	select {
	case <-b.done:
	case <-ctx.Done():
		b.stop()
		<-b.done
	}
}

func (b *Broadcaster) run(ctx context.Context) {
	defer close(b.done)
	for ev := range b.queue {
		b.send(ctx, ev)
	}
}

// allow takes a token from the pod's bucket.
func (b *Broadcaster) allow(pod string, now time.Time) bool {
	bk := b.buckets[pod]
	if bk == nil {
		if len(b.buckets) >= b.cfg.MaxKeys {
			clear(b.buckets) // crude bound: forgetting buckets only refills them
		}
		bk = &bucket{tokens: float64(b.cfg.Burst), last: now}
		b.buckets[pod] = bk
	}
	bk.tokens = min(float64(b.cfg.Burst), bk.tokens+float64(now.Sub(bk.last))/float64(b.cfg.Refill))
	bk.last = now
	if bk.tokens < 1 {
		return false
	}
	bk.tokens--
	return true
}

func (b *Broadcaster) send(ctx context.Context, ev *corev1.Event) {
	if b.cfg.Sink == nil {
		b.dropped.Add(1)
		return
	}
	pod := ev.Namespace + "/" + ev.InvolvedObject.Name + "/" + string(ev.InvolvedObject.UID)
	if !b.allow(pod, ev.LastTimestamp.Time) {
		b.dropped.Add(1)
		b.cfg.Log.Debug("event dropped: rate limit", "pod", pod, "reason", ev.Reason)
		return
	}
	key := dedupKey{pod: ev.Namespace + "/" + ev.InvolvedObject.Name, uid: string(ev.InvolvedObject.UID),
		typ: ev.Type, reason: ev.Reason, message: ev.Message}
	cctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	if s := b.seen[key]; s != nil {
		patch, err := json.Marshal(map[string]any{"count": s.count + 1, "lastTimestamp": ev.LastTimestamp})
		if err == nil {
			_, err = b.cfg.Sink.PatchEvent(cctx, s.namespace, s.name, patch)
		}
		if err == nil {
			s.count++
			b.patched.Add(1)
			return
		}
		if !apierrors.IsNotFound(err) {
			b.dropped.Add(1)
			b.cfg.Log.Warn("event not recorded", "pod", key.pod, "reason", ev.Reason, "err", err)
			return
		}
		// The event expired (the API server keeps them an hour): a new one.
		ev.FirstTimestamp = ev.LastTimestamp
	}
	out, err := b.cfg.Sink.CreateEvent(cctx, ev)
	if err != nil {
		b.dropped.Add(1)
		b.cfg.Log.Warn("event not recorded", "pod", key.pod, "reason", ev.Reason, "err", err)
		return
	}
	b.sent.Add(1)
	b.remember(key, &seenEvent{name: out.Name, namespace: out.Namespace, count: 1, first: ev.FirstTimestamp})
}

// remember keeps key's event for later repeats, forgetting the oldest keys
// beyond MaxKeys.
func (b *Broadcaster) remember(key dedupKey, s *seenEvent) {
	if _, ok := b.seen[key]; !ok {
		b.order = append(b.order, key)
	}
	b.seen[key] = s
	for len(b.order) > b.cfg.MaxKeys {
		delete(b.seen, b.order[0])
		b.order = b.order[1:]
	}
}
