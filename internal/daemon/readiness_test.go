package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/kubecoretest"
)

func gatedPod(name, uid string, gates ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "smrtest", UID: types.UID(uid)}}
	for _, g := range gates {
		p.Spec.ReadinessGates = append(p.Spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: corev1.PodConditionType(g)})
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	return p
}

func condition(p *corev1.Pod) *corev1.PodCondition {
	for i, c := range p.Status.Conditions {
		if c.Type == replication.ConditionReplicaServing {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

// The publisher sets the condition of a pod that lists the gate (merged
// with the pod's other conditions, through the real REST client and
// apimachinery's strategic merge patch), leaves pods without it alone, and
// never patches a pod of the same name that replaced this replica's.
func TestReadinessPublisher(t *testing.T) {
	api := kubecoretest.New(t,
		gatedPod("redis-0", "u0", replication.ConditionReplicaServing),
		gatedPod("redis-1", "u1"),
		gatedPod("redis-2", "u2-new", replication.ConditionReplicaServing),
		gatedPod("redis-3", "u3", "example.com/other"))
	client := api.Client(t)
	var patches atomic.Int32
	api.FailWith(func(r *http.Request) error {
		if r.Method == http.MethodPatch {
			patches.Add(1)
		}
		return nil
	})
	now := time.Date(2026, 12, 3, 17, 0, 0, 0, time.UTC)
	pub := &readinessPublisher{now: func() time.Time { return now }, client: func() (podStatusClient, error) { return client, nil }}
	ctx := context.Background()
	rebuilding := replication.Readiness{Reason: replication.ReadyRebuilding, Message: "repair (cause container-exit: container redis exited)"}
	serving := replication.Readiness{Serving: true, Reason: replication.ReadyServing, Message: "the app is at the log's state"}

	tests := []struct {
		name    string
		pod     podevents.Pod
		r       replication.Readiness
		wantErr error // nil: published
		status  corev1.ConditionStatus
	}{
		{"gated pod, rebuilding", podevents.Pod{Namespace: "smrtest", Name: "redis-0", UID: "u0"}, rebuilding, nil, corev1.ConditionFalse},
		{"gated pod, serving again", podevents.Pod{Namespace: "smrtest", Name: "redis-0", UID: "u0"}, serving, nil, corev1.ConditionTrue},
		{"pod without the gate", podevents.Pod{Namespace: "smrtest", Name: "redis-1", UID: "u1"}, rebuilding, replication.ErrReadinessNotWanted, ""},
		{"pod with another gate only", podevents.Pod{Namespace: "smrtest", Name: "redis-3", UID: "u3"}, rebuilding, replication.ErrReadinessNotWanted, ""},
		{"pod replaced by a new one of the same name", podevents.Pod{Namespace: "smrtest", Name: "redis-2", UID: "u2-old"}, rebuilding, replication.ErrReadinessNotWanted, ""},
		{"pod gone", podevents.Pod{Namespace: "smrtest", Name: "redis-9", UID: "u9"}, rebuilding, replication.ErrReadinessNotWanted, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := patches.Load()
			err := pub.PublishReadiness(ctx, tc.pod, tc.r)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("PublishReadiness = %v, want %v", err, tc.wantErr)
				}
				if n := patches.Load() - before; n != 0 {
					t.Errorf("%d status patches for a pod that does not want the condition", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p := api.Pod(t, tc.pod.Namespace, tc.pod.Name)
			c := condition(p)
			if c == nil || c.Status != tc.status || c.Reason != tc.r.Reason || c.Message != tc.r.Message || !c.LastTransitionTime.Time.Equal(now) {
				t.Fatalf("condition = %+v, want %s %s %q at %v", c, tc.status, tc.r.Reason, tc.r.Message, now)
			}
			if len(p.Status.Conditions) != 2 || !slices.ContainsFunc(p.Status.Conditions, func(c corev1.PodCondition) bool {
				return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
			}) {
				t.Errorf("the pod's other conditions changed: %+v", p.Status.Conditions)
			}
		})
	}

	t.Run("API server errors are returned for a retry", func(t *testing.T) {
		api.FailWith(func(*http.Request) error {
			return apierrors.NewForbidden(corev1.Resource("pods/status"), "redis-0", errors.New("RBAC"))
		})
		defer api.FailWith(nil)
		err := pub.PublishReadiness(ctx, podevents.Pod{Namespace: "smrtest", Name: "redis-0", UID: "u0"}, rebuilding)
		if err == nil || errors.Is(err, replication.ErrReadinessNotWanted) || !apierrors.IsForbidden(err) {
			t.Errorf("PublishReadiness with RBAC missing = %v, want the Forbidden error", err)
		}
	})
	t.Run("no API server", func(t *testing.T) {
		p := &readinessPublisher{now: time.Now, client: func() (podStatusClient, error) { return nil, nil }}
		if err := p.PublishReadiness(ctx, podevents.Pod{Namespace: "smrtest", Name: "redis-0"}, rebuilding); !errors.Is(err, replication.ErrReadinessNotWanted) {
			t.Errorf("PublishReadiness without an API server = %v", err)
		}
	})
}

// recordingPublisher records the verdicts a daemon publishes.
type recordingPublisher struct {
	mu  sync.Mutex
	got []replication.Readiness
}

func (p *recordingPublisher) PublishReadiness(_ context.Context, _ podevents.Pod, r replication.Readiness) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, r)
	return nil
}

func (p *recordingPublisher) reasons() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, r := range p.got {
		out = append(out, r.Reason)
	}
	return out
}

// switchDialer reaches the app, or nothing while the app is "dead".
type switchDialer struct {
	app  string
	dead atomic.Bool
}

func (d *switchDialer) DialApp(ctx context.Context, _ int) (net.Conn, error) {
	if d.dead.Load() {
		return nil, errors.New("connection refused (app container exited)")
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.app)
}

// An app container that exits fences its replica at once: the pod's
// condition goes to Rebuilding, new clients are refused with the reason,
// and the CreateContainer of the same restart does not repair a second
// time; once the new app is up it is emptied and the log replayed into it
// once, and the condition is Serving again.
func TestContainerExitRepairsOnceAndFollowsReadiness(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	app, raftPort := newCounterApp(t), freeport.PortT(t)
	pub, events := &recordingPublisher{}, &eventLog{}
	dial := &switchDialer{app: app.ln.Addr().String()}
	d := newLoopbackDaemonWithConfig(t, t.TempDir(), app, func(c *Config) {
		c.Readiness, c.Events = pub, events
		c.Dialer = func(string) replication.AppDialer { return dial }
	})
	defer d.Close(ctx)
	if err := d.AttachPod(ctx, onePod("sb1", raftPort)); err != nil {
		t.Fatal(err)
	}
	addr := <-d.clientAddr // kept across the rebuild
	incr(t, ctx, addr, 3)
	waitFor(t, ctx, "Serving published", func() (bool, string) {
		r := pub.reasons()
		return len(r) == 1 && r[0] == replication.ReadyServing, strings.Join(r, ",")
	})

	// SIGKILL of the app: it is gone, and comes back empty.
	dial.dead.Store(true)
	app.restartEmpty()
	d.mgr.ContainerExited(ctx, "sb1", "c0ffee", "redis", 0, "exit code 137")
	waitFor(t, ctx, "Rebuilding published", func() (bool, string) {
		r := pub.reasons()
		return len(r) == 2 && r[1] == replication.ReadyRebuilding, strings.Join(r, ",")
	})
	if msg := pub.got[1].Message; !strings.Contains(msg, "cause container-exit") || !strings.Contains(msg, "exit code 137") {
		t.Errorf("Rebuilding message %q does not say why", msg)
	}
	// A client as redis-cli (go-redis drops a pooled connection that has
	// unread bytes, and the refusal is sent before the request is read).
	if reply := rawRoundTrip(t, addr, "*1\r\n$4\r\nPING\r\n"); !strings.HasPrefix(reply,
		"-ERR smr-cri: replication unavailable: app on this replica is not ready: replica rebuilding: repair (cause container-exit") {
		t.Errorf("a new client of the rebuilding replica got %q, want the refusal naming the cause", reply)
	}

	// kubelet re-creates the container: the same restart, no second repair.
	d.ContainerCreating(ctx, "sb1", "redis", 1)
	dial.dead.Store(false)
	waitFor(t, ctx, "Serving again", func() (bool, string) {
		r := pub.reasons()
		return len(r) == 3 && r[2] == replication.ReadyServing, strings.Join(r, ",")
	})
	waitFor(t, ctx, "RepairFinished", func() (bool, string) {
		return len(events.with(podevents.ReasonRepairFinished)) > 0, strings.Join(events.evs, "\n")
	})
	if evs := events.with(podevents.ReasonRepairStarted); len(evs) != 1 || !strings.Contains(evs[0], "cause container-exit") {
		t.Errorf("RepairStarted events %q, want one, cause container-exit", evs)
	}
	if _, k := app.counts(); k != 3 || app.flushCount() != 1 {
		t.Errorf("k=%d after %d FLUSHALL, want the app emptied once and the 3 INCRs replayed", k, app.flushCount())
	}
	incr(t, ctx, addr, 1)
}

// rawRoundTrip sends req on a new connection and returns everything the
// server answered before closing it.
func rawRoundTrip(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

// The CreateContainer after an exit is the same restart only while the
// exit's repair is still under way; once that repair ended (the app came
// back some other way, or the repair gave up), a container created again is
// repaired again.
func TestExitThenCreateRepairs(t *testing.T) {
	tests := []struct {
		name        string
		endFirst    bool   // the exit's repair ends before the creation
		attempt     uint32 // of the creation
		wantRepairs int
	}{
		{"creation during the exit's repair", false, 1, 1},
		{"creation after the exit's repair ended", true, 1, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			app, raftPort := newCounterApp(t), freeport.PortT(t)
			events := &eventLog{}
			dial := &switchDialer{app: app.ln.Addr().String()}
			d := newLoopbackDaemonWithConfig(t, t.TempDir(), app, func(c *Config) {
				c.Events = events
				c.Dialer = func(string) replication.AppDialer { return dial }
			})
			defer d.Close(ctx)
			if err := d.AttachPod(ctx, onePod("sb1", raftPort)); err != nil {
				t.Fatal(err)
			}
			incr(t, ctx, <-d.clientAddr, 2)
			finished := func(n int) {
				t.Helper()
				waitFor(t, ctx, fmt.Sprintf("%d RepairFinished", n), func() (bool, string) {
					return len(events.with(podevents.ReasonRepairFinished)) == n, strings.Join(events.evs, "\n")
				})
			}
			dial.dead.Store(true)
			app.restartEmpty()
			d.mgr.ContainerExited(ctx, "sb1", "c0ffee", "redis", 0, "exit code 137")
			if tc.endFirst {
				dial.dead.Store(false)
				finished(1)
			}
			d.ContainerCreating(ctx, "sb1", "redis", tc.attempt)
			dial.dead.Store(false)
			finished(tc.wantRepairs)
			if n := len(events.with(podevents.ReasonRepairStarted)); n != tc.wantRepairs {
				t.Errorf("%d RepairStarted, want %d:\n%s", n, tc.wantRepairs, strings.Join(events.evs, "\n"))
			}
			if _, k := app.counts(); k != 2 {
				t.Errorf("k=%d after the repairs, want the 2 INCRs replayed", k)
			}
		})
	}
}
