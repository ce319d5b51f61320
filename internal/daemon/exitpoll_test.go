package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var (
	running = runtimeapi.ContainerState_CONTAINER_RUNNING
	exited  = runtimeapi.ContainerState_CONTAINER_EXITED
)

func ctr(sandbox, id, name string, attempt uint32, state runtimeapi.ContainerState, created int64) *runtimeapi.Container {
	return &runtimeapi.Container{Id: id, PodSandboxId: sandbox, State: state, CreatedAt: created,
		Metadata: &runtimeapi.ContainerMetadata{Name: name, Attempt: attempt}}
}

func ctrStatus(c *runtimeapi.Container, code int32, finished int64, reason string) *runtimeapi.ContainerStatus {
	return &runtimeapi.ContainerStatus{Id: c.Id, Metadata: c.Metadata, State: c.State, CreatedAt: c.CreatedAt,
		FinishedAt: finished, ExitCode: code, Reason: reason}
}

func TestClassifyExit(t *testing.T) {
	app := ctr("sb", "a", "app", 0, exited, 100)
	initC := ctr("sb", "i", "init", 0, exited, 50)
	tests := []struct {
		name    string
		st      *runtimeapi.ContainerStatus
		sandbox []*runtimeapi.Container
		want    exitDecision
		detail  string
	}{
		{"app killed, alone in its pod", ctrStatus(app, 137, 200, "Error"), []*runtimeapi.Container{app},
			exitDecision{settled: true, appExit: true}, "exit code 137, reason Error"},
		{"app OOM-killed, init container long done", ctrStatus(app, 137, 200, "OOMKilled"), []*runtimeapi.Container{initC, app},
			exitDecision{settled: true, appExit: true}, "reason OOMKilled"},
		{"clean exit, nothing else runs: init just done or app shut down", ctrStatus(app, 0, 200, "Completed"),
			[]*runtimeapi.Container{app}, exitDecision{}, ""},
		{"clean exit while a sidecar runs", ctrStatus(app, 0, 200, "Completed"),
			[]*runtimeapi.Container{app, ctr("sb", "s", "sidecar", 0, running, 90)}, exitDecision{settled: true, appExit: true}, "exit code 0"},
		{"init container done, app created after it", ctrStatus(initC, 0, 60, "Completed"),
			[]*runtimeapi.Container{initC, ctr("sb", "a2", "app", 0, running, 70)}, exitDecision{settled: true}, ""},
		{"init container failed, nothing created after it", ctrStatus(initC, 1, 60, "Error"),
			[]*runtimeapi.Container{initC}, exitDecision{settled: true, appExit: true}, "exit code 1"},
		{"running again by the time of ContainerStatus", ctrStatus(ctr("sb", "a", "app", 0, running, 100), 0, 0, ""),
			[]*runtimeapi.Container{app}, exitDecision{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := classifyExit(tc.st, tc.sandbox)
			if got.settled != tc.want.settled || got.appExit != tc.want.appExit || !strings.Contains(got.detail, tc.detail) {
				t.Errorf("classifyExit = %+v, want %+v with detail containing %q", got, tc.want, tc.detail)
			}
		})
	}
}

func TestExitCandidates(t *testing.T) {
	tests := []struct {
		name    string
		ctrs    []*runtimeapi.Container
		handled map[string]bool
		want    []string
	}{
		{"latest attempt exited", []*runtimeapi.Container{ctr("sb", "a0", "app", 0, exited, 1), ctr("sb", "a1", "app", 1, exited, 2)}, nil, []string{"a1"}},
		{"earlier attempt exited, latest runs", []*runtimeapi.Container{ctr("sb", "a0", "app", 0, exited, 1), ctr("sb", "a1", "app", 1, running, 2)}, nil, nil},
		{"already handled", []*runtimeapi.Container{ctr("sb", "a0", "app", 0, exited, 1)}, map[string]bool{"a0": true}, nil},
		{"one per container name", []*runtimeapi.Container{ctr("sb", "a0", "app", 0, exited, 1), ctr("sb", "s0", "sidecar", 0, exited, 1),
			ctr("sb", "x", "other", 0, running, 1)}, nil, []string{"a0", "s0"}},
		{"same attempt twice: the newer", []*runtimeapi.Container{ctr("sb", "old", "app", 0, running, 1), ctr("sb", "new", "app", 0, exited, 5)}, nil, []string{"new"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range exitCandidates(tc.ctrs, tc.handled) {
				got = append(got, c.Id)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("candidates = %v, want %v", got, tc.want)
			}
		})
	}
}

// fakeContainers is the runtime as the poller sees it.
type fakeContainers struct {
	mu       sync.Mutex
	ctrs     []*runtimeapi.Container
	statuses map[string]*runtimeapi.ContainerStatus
	listErr  error
	asked    []string // ContainerStatus calls
}

func (f *fakeContainers) ListContainers(context.Context, *runtimeapi.ListContainersRequest, ...grpc.CallOption) (*runtimeapi.ListContainersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &runtimeapi.ListContainersResponse{Containers: slices.Clone(f.ctrs)}, f.listErr
}

func (f *fakeContainers) ContainerStatus(_ context.Context, in *runtimeapi.ContainerStatusRequest, _ ...grpc.CallOption) (*runtimeapi.ContainerStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, in.ContainerId)
	st, ok := f.statuses[in.ContainerId]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such container")
	}
	return &runtimeapi.ContainerStatusResponse{Status: st}, nil
}

// exitCalls records the exits reported to the repair path.
type exitCalls struct {
	mu    sync.Mutex
	calls []string
	done  chan struct{}
}

func (e *exitCalls) ContainerExited(_ context.Context, sandbox, id, name string, attempt uint32, detail string) {
	e.mu.Lock()
	e.calls = append(e.calls, fmt.Sprintf("%s/%s %s#%d: %s", sandbox, id, name, attempt, detail))
	e.mu.Unlock()
	e.done <- struct{}{}
}

// One pass of the poller over a node: only attached sandboxes count, an
// exit is reported once, a clean exit with nothing else running waits for
// the next pass, runtime errors end the pass with an error.
func TestExitPollerPoll(t *testing.T) {
	app := ctr("sb1", "app1", "app", 2, exited, 100)
	other := ctr("sb9", "x", "app", 0, exited, 100) // not replicated
	clean := ctr("sb2", "app2", "app", 0, exited, 100)
	rt := &fakeContainers{
		ctrs: []*runtimeapi.Container{ctr("sb1", "app0", "app", 1, exited, 50), app, other, clean},
		statuses: map[string]*runtimeapi.ContainerStatus{
			"app1": ctrStatus(app, 137, 200, "Error"), "x": ctrStatus(other, 137, 200, ""), "app2": ctrStatus(clean, 0, 200, "Completed")},
	}
	sink := &exitCalls{done: make(chan struct{}, 8)}
	p := &exitPoller{rt: rt, sink: sink, attached: func() []string { return []string{"sb1", "sb2"} }, log: slog.New(slog.DiscardHandler)}
	for pass := range 3 {
		if err := p.poll(context.Background()); err != nil {
			t.Fatalf("pass %d: %v", pass, err)
		}
	}
	<-sink.done
	if len(sink.calls) != 1 || !strings.HasPrefix(sink.calls[0], "sb1/app1 app#2: exit code 137, reason Error") {
		t.Errorf("exits reported: %q, want sb1's app attempt 2 once", sink.calls)
	}
	rt.mu.Lock()
	asked := slices.Clone(rt.asked)
	rt.mu.Unlock()
	if !slices.Equal(asked, []string{"app1", "app2", "app2", "app2"}) && !slices.Equal(asked, []string{"app2", "app1", "app2", "app2"}) {
		t.Errorf("ContainerStatus asked for %v: want app1 once (then handled) and the undecided app2 at every pass", asked)
	}
	// kubelet re-created it and removed the dead one: the record goes.
	rt.mu.Lock()
	rt.ctrs = []*runtimeapi.Container{ctr("sb1", "app3", "app", 3, running, 300)}
	rt.mu.Unlock()
	if err := p.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(p.handled) != 0 {
		t.Errorf("handled = %v after the container was removed", p.handled)
	}

	rt.mu.Lock()
	rt.listErr = errors.New("runtime down")
	rt.mu.Unlock()
	if err := p.poll(context.Background()); err == nil || !strings.Contains(err.Error(), "list containers: runtime down") {
		t.Errorf("poll with the runtime down: %v", err)
	}
	rt.mu.Lock()
	rt.listErr = nil
	rt.ctrs = []*runtimeapi.Container{ctr("sb1", "gone", "app", 4, exited, 400)}
	rt.mu.Unlock()
	if err := p.poll(context.Background()); err == nil || !strings.Contains(err.Error(), "status of container gone of sandbox sb1") {
		t.Errorf("poll with a container removed between list and status: %v", err)
	}
	none := &exitPoller{rt: rt, sink: sink, attached: func() []string { return nil }, log: slog.New(slog.DiscardHandler)}
	rt.mu.Lock()
	n := len(rt.asked)
	rt.mu.Unlock()
	if err := none.poll(context.Background()); err != nil || len(rt.asked) != n {
		t.Errorf("a node without replicated pods asked the runtime (%v)", err)
	}
}
