package cri

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/replication/podcontract"
)

// TestShutdownWithOpenStream checks Shutdown returns although a
// GetContainerEvents stream (which never ends by itself) is open, and that
// the stream's caller sees the end.
func TestShutdownWithOpenStream(t *testing.T) {
	e := newTestEnv(t)
	e.fake.mu.Lock()
	e.fake.hold = true
	e.fake.mu.Unlock()
	stream, err := runtimeapi.NewRuntimeServiceClient(e.viaProxy).GetContainerEvents(testCtx(t), &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatalf("stream header: %v", err)
	}
	e.proxy.Shutdown(0) // graceful stop cannot finish: falls back to Stop
	if _, err := stream.Recv(); err == nil {
		t.Fatal("stream still delivering after shutdown")
	}
}

// TestMetricsCountCalls checks the metrics interceptors see raw-forwarded
// and hooked calls with their status codes.
func TestMetricsCountCalls(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Fatal("registering the metrics twice succeeded, want an error")
	}
	e := newTestEnvWith(t, Options{ServerOptions: m.ServerOptions()})
	seed(e.fake)
	rt := runtimeapi.NewRuntimeServiceClient(e.viaProxy)
	ctx := testCtx(t)
	if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatal(err)
	}
	e.fake.rt.InjectError("ContainerStatus", status.Error(codes.NotFound, "nope"))
	_, _ = rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "x"})
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: fixtureSandbox}); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ method, code string }{
		{"/runtime.v1.RuntimeService/Version", "OK"},
		{"/runtime.v1.RuntimeService/ContainerStatus", "NotFound"},
		{"/runtime.v1.RuntimeService/StopPodSandbox", "OK"},
	}
	for _, tc := range tests {
		var pb dto.Metric
		if err := m.calls.WithLabelValues(tc.method, tc.code).Write(&pb); err != nil {
			t.Fatal(err)
		}
		if got := pb.GetCounter().GetValue(); got != 1 {
			t.Errorf("smr_cri_calls_total{method=%q,code=%q} = %v, want 1", tc.method, tc.code, got)
		}
	}
}

func TestLoggingReplicator(t *testing.T) {
	var buf bytes.Buffer
	r := NewLoggingReplicator(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx := context.Background()
	if err := r.AttachPod(ctx, podcontract.Pod{SandboxID: "s1", Meta: podcontract.Meta{Name: "redis-0", Namespace: "db"}, NetNSPath: "/var/run/netns/cni-1", IPs: []string{"198.19.1.5"}}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"s1", "s1", "unknown"} { // idempotent, unknown IDs ignored
		if err := r.DetachPod(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	out := buf.String()
	for _, want := range []string{"would attach", "sandbox=s1", "pod=db/redis-0", "netns=/var/run/netns/cni-1", "198.19.1.5", "would detach"} {
		if !strings.Contains(out, want) {
			t.Errorf("log does not contain %q:\n%s", want, out)
		}
	}
	// Only the detach of the attached pod is logged at info level.
	if n := strings.Count(out, "would detach"); n != 1 {
		t.Errorf("%d detach lines at info level, want 1:\n%s", n, out)
	}
}
