package podevents_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/test/lab/kubecoretest"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

var redis1 = podevents.Pod{Namespace: "default", Name: "redis-1", UID: "uid-1"}

// flush closes b, waiting for everything queued to be sent.
func flush(t *testing.T, b *podevents.Broadcaster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b.Close(ctx)
}

func TestBroadcasterCreatesAndDeduplicates(t *testing.T) {
	srv := kubecoretest.New(t)
	clk := &clock{t: time.Unix(1000, 0)}
	b := podevents.New(podevents.Config{Sink: srv.Client(t), Host: "node1", Now: clk.Now})
	podevents.Eventf(b, redis1, podevents.Normal, podevents.ReasonAttached, "attached as member %d of group %s", 2, "default.redis")
	for range 3 {
		clk.Add(time.Second)
		b.Event(redis1, podevents.Normal, podevents.ReasonAttached, "attached as member 2 of group default.redis")
	}
	b.Event(redis1, podevents.Warning, podevents.ReasonDivergenceDetected, "digest mismatch at index 40")
	flush(t, b)
	evs := srv.Events(t, "default")
	if len(evs) != 2 {
		t.Fatalf("%d events, want 2 (repeats patched): %+v", len(evs), evs)
	}
	byReason := map[string]corev1.Event{}
	for _, ev := range evs {
		byReason[ev.Reason] = ev
	}
	att := byReason[podevents.ReasonAttached]
	if att.Count != 4 || att.Type != corev1.EventTypeNormal || att.InvolvedObject.Kind != "Pod" || att.InvolvedObject.Name != "redis-1" ||
		att.InvolvedObject.UID != "uid-1" || att.Source.Component != "smr-cri" || att.Source.Host != "node1" ||
		!att.LastTimestamp.Time.Equal(time.Unix(1003, 0)) || !att.FirstTimestamp.Time.Equal(time.Unix(1000, 0)) {
		t.Errorf("attached event = %+v, want count 4 from 1000s to 1003s on pod redis-1 uid-1", att)
	}
	if div := byReason[podevents.ReasonDivergenceDetected]; div.Type != corev1.EventTypeWarning || div.Count != 1 {
		t.Errorf("divergence event = %+v", div)
	}
	if st := b.Stats(); st != (podevents.Stats{Sent: 2, Patched: 3}) {
		t.Errorf("stats %+v", st)
	}
}

func TestBroadcasterRateLimitsPerPod(t *testing.T) {
	srv := kubecoretest.New(t)
	clk := &clock{t: time.Unix(1000, 0)}
	b := podevents.New(podevents.Config{Sink: srv.Client(t), Now: clk.Now, Burst: 3, Refill: time.Minute})
	other := podevents.Pod{Namespace: "default", Name: "redis-2"}
	for i := range 5 {
		b.Event(redis1, podevents.Warning, podevents.ReasonContractError, "bad annotation "+string(rune('a'+i)))
	}
	b.Event(other, podevents.Normal, podevents.ReasonAttached, "not limited by redis-1's bucket")
	clk.Add(time.Minute) // one token back
	b.Event(redis1, podevents.Warning, podevents.ReasonContractError, "after a minute")
	flush(t, b)
	var n1, n2 int
	for _, ev := range srv.Events(t, "default") {
		switch ev.InvolvedObject.Name {
		case "redis-1":
			n1++
		case "redis-2":
			n2++
		}
	}
	if n1 != 4 || n2 != 1 {
		t.Fatalf("redis-1 %d events (want burst 3 + 1 refilled), redis-2 %d (want 1)", n1, n2)
	}
	if st := b.Stats(); st.Dropped != 2 {
		t.Errorf("dropped %d, want 2", st.Dropped)
	}
}

func TestBroadcasterBadInputAndErrors(t *testing.T) {
	srv := kubecoretest.New(t)
	b := podevents.New(podevents.Config{Sink: srv.Client(t)})
	b.Event(podevents.Pod{Name: "no-namespace"}, podevents.Normal, "R", "m")
	b.Event(podevents.Pod{Namespace: "default"}, podevents.Normal, "R", "no name")
	b.Event(redis1, podevents.Normal, "", "no reason")
	b.Event(redis1, "Bogus", "OddType", strings.Repeat("x", 5000)) // unknown type: Warning; long message cut
	flush(t, b)
	evs := srv.Events(t, "default")
	if len(evs) != 1 || evs[0].Type != corev1.EventTypeWarning || len(evs[0].Message) != 1024 || !strings.HasSuffix(evs[0].Message, "...") {
		t.Fatalf("events %+v, want one Warning with a 1024-byte message", evs)
	}
	if st := b.Stats(); st.Dropped != 3 || st.Sent != 1 {
		t.Errorf("stats %+v, want 3 dropped, 1 sent", st)
	}
	// After Close, events are dropped, never a panic.
	b.Event(redis1, podevents.Normal, "Late", "after close")

	// API errors drop the event (counted), later ones still go through.
	srv2 := kubecoretest.New(t)
	b2 := podevents.New(podevents.Config{Sink: srv2.Client(t)})
	srv2.FailWith(func(r *http.Request) error {
		if r.Method == http.MethodPost {
			return apierrors.NewForbidden(corev1.Resource("events"), "", errors.New("no RBAC"))
		}
		return nil
	})
	b2.Event(redis1, podevents.Normal, "Forbidden", "m")
	waitFor(t, func() bool { return b2.Stats().Dropped == 1 })
	srv2.FailWith(nil)
	b2.Event(redis1, podevents.Normal, "Expiring", "m")
	b2.Event(redis1, podevents.Normal, "Expiring", "m") // patched
	flush(t, b2)
	evs = srv2.Events(t, "default")
	if len(evs) != 1 || evs[0].Count != 2 {
		t.Fatalf("events %+v, want one with count 2", evs)
	}
	if st := b2.Stats(); st.Dropped != 1 {
		t.Errorf("stats %+v, want the forbidden one dropped", st)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBroadcasterRecreatesExpiredEvent(t *testing.T) {
	srv := kubecoretest.New(t)
	clk := &clock{t: time.Unix(1000, 0)}
	b := podevents.New(podevents.Config{Sink: srv.Client(t), Now: clk.Now})
	b.Event(redis1, podevents.Normal, "Again", "m")
	// Wait until it is stored, then let it expire as the API server does.
	waitFor(t, func() bool { return b.Stats().Sent == 1 })
	first := srv.Events(t, "default")[0]
	if err := srv.Tracker.Delete(corev1.SchemeGroupVersion.WithResource("events"), "default", first.Name); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	b.Event(redis1, podevents.Normal, "Again", "m")
	flush(t, b)
	evs := srv.Events(t, "default")
	if len(evs) != 1 || evs[0].Count != 1 || !evs[0].FirstTimestamp.Time.Equal(time.Unix(1000, 0).Add(time.Hour)) {
		t.Fatalf("events %+v, want a new event at 1000s+1h", evs)
	}
}

func TestEventfNilRecorder(t *testing.T) {
	podevents.Eventf(nil, redis1, podevents.Normal, "R", "no panic %d", 1)
	podevents.Eventf(podevents.Discard{}, redis1, podevents.Normal, "R", "no panic %d", 1)
}
