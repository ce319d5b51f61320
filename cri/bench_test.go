package cri

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	critest "k8s.io/cri-api/pkg/apis/testing"
)

// benchContainers fills the fake runtime with n containers shaped like the
// ones kubelet creates (kubelet's labels and annotations on each).
func benchContainers(f *fakeRuntime, n int) {
	var cs []*critest.FakeContainer
	for i := range n {
		pod := fmt.Sprintf("web-%d", i/2)
		cs = append(cs, &critest.FakeContainer{
			SandboxID: "sandbox-" + pod,
			ContainerStatus: runtimeapi.ContainerStatus{
				Id:        fmt.Sprintf("%064x", i),
				Metadata:  &runtimeapi.ContainerMetadata{Name: fmt.Sprintf("app-%d", i%2), Attempt: 1},
				State:     runtimeapi.ContainerState_CONTAINER_RUNNING,
				CreatedAt: time.Now().UnixNano(),
				StartedAt: time.Now().UnixNano(),
				Image:     &runtimeapi.ImageSpec{Image: "registry.k8s.io/e2e-test-images/nginx:1.14-2"},
				ImageRef:  "sha256:" + strings.Repeat("ab", 32),
				Labels: map[string]string{
					"io.kubernetes.container.name": fmt.Sprintf("app-%d", i%2),
					"io.kubernetes.pod.name":       pod,
					"io.kubernetes.pod.namespace":  "default",
					"io.kubernetes.pod.uid":        fmt.Sprintf("6c0a3c7e-0000-4000-8000-%012d", i/2),
				},
				Annotations: map[string]string{
					"io.kubernetes.container.hash":                     "a1b2c3d4",
					"io.kubernetes.container.restartCount":             "0",
					"io.kubernetes.container.terminationMessagePath":   "/dev/termination-log",
					"io.kubernetes.container.terminationMessagePolicy": "File",
					"io.kubernetes.pod.terminationGracePeriod":         "30",
				},
				LogPath: fmt.Sprintf("/var/log/pods/default_%s/app/0.log", pod),
			},
		})
	}
	f.rt.SetFakeContainers(cs)
}

// BenchmarkProxyOverhead measures ListContainers (100 containers) and
// ContainerStatus directly against a runtime and through the proxy in the same
// run, and reports through/direct ratios (target: <= 1.15).
func BenchmarkProxyOverhead(b *testing.B) {
	e := newTestEnv(b)
	benchContainers(e.fake, 100)
	id := fmt.Sprintf("%064x", 7)
	ctx := context.Background()
	ops := []struct {
		name string
		call func(rt runtimeapi.RuntimeServiceClient) error
	}{
		{"list", func(rt runtimeapi.RuntimeServiceClient) error {
			resp, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			if err == nil && len(resp.Containers) != 100 {
				err = fmt.Errorf("got %d containers, want 100", len(resp.Containers))
			}
			return err
		}},
		{"status", func(rt runtimeapi.RuntimeServiceClient) error {
			_, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
			return err
		}},
	}
	paths := []struct {
		name string
		rt   runtimeapi.RuntimeServiceClient
	}{
		{"direct", runtimeapi.NewRuntimeServiceClient(e.direct)},
		{"proxy", runtimeapi.NewRuntimeServiceClient(e.viaProxy)},
	}
	for _, op := range ops {
		b.Run(op.name, func(b *testing.B) {
			// Warm up both connections and the runtime.
			for range 100 {
				for _, p := range paths {
					if err := op.call(p.rt); err != nil {
						b.Fatalf("%s %s: %v", op.name, p.name, err)
					}
				}
			}
			// Interleave direct and proxied calls so both see the same machine
			// load; time each separately.
			spent := make([]time.Duration, len(paths))
			for b.Loop() {
				for i, p := range paths {
					start := time.Now()
					if err := op.call(p.rt); err != nil {
						b.Fatalf("%s %s: %v", op.name, p.name, err)
					}
					spent[i] += time.Since(start)
				}
			}
			for i, p := range paths {
				b.ReportMetric(float64(spent[i].Microseconds())/float64(b.N), p.name+"-µs/op")
			}
			b.ReportMetric(float64(spent[1])/float64(spent[0]), "ratio-"+op.name)
		})
	}
	// The fake records every call; keep its log from growing across runs.
	e.fake.rt.Lock()
	e.fake.rt.Called = nil
	e.fake.rt.Unlock()
}
