package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	critest "k8s.io/cri-api/pkg/apis/testing"

	"github.com/smr-io/smr-cri/replication/podcontract"
)

// testCtx bounds a test call. The bound only keeps a broken proxy from hanging
// the test; no assertion depends on timing.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

const (
	fixtureSandbox   = "sb-1"
	fixtureContainer = "ctr-1"
	fixtureImage     = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
)

// seed gives the fake one sandbox, one container and one image.
func seed(f *fakeRuntime) {
	f.rt.SetFakeSandboxes([]*critest.FakePodSandbox{{PodSandboxStatus: runtimeapi.PodSandboxStatus{
		Id:       fixtureSandbox,
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "web", Namespace: "default", Uid: "uid-web"},
		State:    runtimeapi.PodSandboxState_SANDBOX_READY,
		Network:  &runtimeapi.PodSandboxNetworkStatus{Ip: "198.19.1.7"},
		Labels:   map[string]string{"app": "web"},
	}}})
	f.rt.SetFakeContainers([]*critest.FakeContainer{{
		SandboxID: fixtureSandbox,
		ContainerStatus: runtimeapi.ContainerStatus{
			Id:       fixtureContainer,
			Metadata: &runtimeapi.ContainerMetadata{Name: "web"},
			State:    runtimeapi.ContainerState_CONTAINER_RUNNING,
			Image:    &runtimeapi.ImageSpec{Image: fixtureImage},
			ImageRef: "sha256:abc",
			Labels:   map[string]string{"io.kubernetes.pod.name": "web"},
		},
	}})
	f.rt.SetFakeContainerStats([]*runtimeapi.ContainerStats{{Attributes: &runtimeapi.ContainerAttributes{Id: fixtureContainer}}})
	f.rt.SetFakePodSandboxStats([]*runtimeapi.PodSandboxStats{{Attributes: &runtimeapi.PodSandboxAttributes{Id: fixtureSandbox}}})
	f.img.SetFakeImages([]string{fixtureImage})
}

type criCall func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, img runtimeapi.ImageServiceClient) (proto.Message, error)

func podConfig(name string, labels map[string]string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:    &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: "uid-" + name},
		Labels:      labels,
		Annotations: map[string]string{"kubernetes.io/config.source": "file"},
	}
}

// passThroughCases covers every RuntimeService and ImageService RPC. Each
// runs once directly against the fake and once through the proxy; the
// answers (or errors) must be identical. Order matters: removals come last.
var passThroughCases = []struct {
	name string // the fake's recorded call name, "" if the fake does not record it
	call criCall
}{
	{"Version", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
	}},
	{"Status", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	}},
	{"RunPodSandbox", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("plain", nil), RuntimeHandler: "runc"})
	}},
	{"PodSandboxStatus", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: fixtureSandbox, Verbose: true})
	}},
	{"ListPodSandbox", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{Id: fixtureSandbox}})
	}},
	{"CreateContainer", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: fixtureSandbox,
			SandboxConfig: podConfig("web", nil),
			Config:        &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "side"}, Image: &runtimeapi.ImageSpec{Image: fixtureImage}}})
	}},
	{"StartContainer", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: fixtureContainer})
	}},
	{"ListContainers", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{Id: fixtureContainer}})
	}},
	{"ContainerStatus", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: fixtureContainer})
	}},
	{"UpdateContainerResources", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: fixtureContainer, Linux: &runtimeapi.LinuxContainerResources{CpuShares: 512}})
	}},
	{"ReopenContainerLog", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: fixtureContainer})
	}},
	{"ExecSync", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: fixtureContainer, Cmd: []string{"redis-cli", "ping"}, Timeout: 5})
	}},
	{"Exec", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: fixtureContainer, Cmd: []string{"sh"}, Stdin: true, Tty: true})
	}},
	{"Attach", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: fixtureContainer, Stdout: true})
	}},
	{"PortForward", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: fixtureSandbox, Port: []int32{6379}})
	}},
	{"ContainerStats", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: fixtureContainer})
	}},
	{"ListContainerStats", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{})
	}},
	{"PodSandboxStats", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: fixtureSandbox})
	}},
	{"ListPodSandboxStats", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{})
	}},
	{"UpdateRuntimeConfig", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.UpdateRuntimeConfig(ctx, &runtimeapi.UpdateRuntimeConfigRequest{RuntimeConfig: &runtimeapi.RuntimeConfig{NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: "198.19.1.0/24"}}})
	}},
	{"CheckpointContainer", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: fixtureContainer, Location: "/tmp/cp.tar"})
	}},
	{"ListMetricDescriptors", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ListMetricDescriptors(ctx, &runtimeapi.ListMetricDescriptorsRequest{})
	}},
	{"ListPodSandboxMetrics", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.ListPodSandboxMetrics(ctx, &runtimeapi.ListPodSandboxMetricsRequest{})
	}},
	{"RuntimeConfig", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.RuntimeConfig(ctx, &runtimeapi.RuntimeConfigRequest{})
	}},
	// Not implemented by the fake: the runtime's Unimplemented status must
	// come back unchanged.
	{"", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: fixtureSandbox})
	}},
	{"", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.RestorePod(ctx, &runtimeapi.RestorePodRequest{})
	}},
	{"", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: fixtureSandbox})
	}},
	{"ListImages", func(ctx context.Context, _ runtimeapi.RuntimeServiceClient, img runtimeapi.ImageServiceClient) (proto.Message, error) {
		return img.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	}},
	{"ImageStatus", func(ctx context.Context, _ runtimeapi.RuntimeServiceClient, img runtimeapi.ImageServiceClient) (proto.Message, error) {
		return img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: fixtureImage}})
	}},
	{"PullImage", func(ctx context.Context, _ runtimeapi.RuntimeServiceClient, img runtimeapi.ImageServiceClient) (proto.Message, error) {
		return img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "localhost/other:1"}})
	}},
	{"ImageFsInfo", func(ctx context.Context, _ runtimeapi.RuntimeServiceClient, img runtimeapi.ImageServiceClient) (proto.Message, error) {
		return img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	}},
	{"RemoveImage", func(ctx context.Context, _ runtimeapi.RuntimeServiceClient, img runtimeapi.ImageServiceClient) (proto.Message, error) {
		return img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "localhost/other:1"}})
	}},
	{"StopContainer", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: fixtureContainer, Timeout: 10})
	}},
	{"RemoveContainer", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: fixtureContainer})
	}},
	{"StopPodSandbox", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: fixtureSandbox})
	}},
	{"RemovePodSandbox", func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
		return rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: fixtureSandbox})
	}},
}

// TestEveryRPCPassesThrough checks that each CRI RPC gives the same answer
// through the proxy as directly, and that the proxy really called the runtime.
func TestEveryRPCPassesThrough(t *testing.T) {
	e := newTestEnv(t)
	seed(e.fake)
	ctx := testCtx(t)
	directRT, directImg := runtimeapi.NewRuntimeServiceClient(e.direct), runtimeapi.NewImageServiceClient(e.direct)
	proxyRT, proxyImg := runtimeapi.NewRuntimeServiceClient(e.viaProxy), runtimeapi.NewImageServiceClient(e.viaProxy)
	for i, tc := range passThroughCases {
		t.Run(fmt.Sprintf("%02d-%s", i, tc.name), func(t *testing.T) {
			want, wantErr := tc.call(ctx, directRT, directImg)
			rtBefore, imgBefore := len(e.fake.rt.GetCalls()), len(e.fake.imageCalls())
			got, gotErr := tc.call(ctx, proxyRT, proxyImg)
			if !proto.Equal(status.Convert(gotErr).Proto(), status.Convert(wantErr).Proto()) {
				t.Fatalf("error through proxy = %v, directly = %v", gotErr, wantErr)
			}
			if wantErr == nil && !proto.Equal(got, want) {
				t.Fatalf("response through proxy differs:\n got  %v\n want %v", got, want)
			}
			if tc.name == "" {
				return
			}
			calls := append(e.fake.rt.GetCalls()[rtBefore:], e.fake.imageCalls()[imgBefore:]...)
			if !contains(calls, tc.name) {
				t.Fatalf("runtime did not record %s through the proxy; new calls %v", tc.name, calls)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestIDsAndStreamingURLsUnchanged checks the values kubelet relies on
// literally: IDs it gets back and the streaming URLs it dials.
func TestIDsAndStreamingURLsUnchanged(t *testing.T) {
	e := newTestEnv(t)
	seed(e.fake)
	ctx := testCtx(t)
	rt := runtimeapi.NewRuntimeServiceClient(e.viaProxy)
	run, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("plain", nil)})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	create, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: run.PodSandboxId, SandboxConfig: podConfig("plain", nil),
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, Image: &runtimeapi.ImageSpec{Image: fixtureImage}}})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	exec, err := rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: create.ContainerId, Cmd: []string{"sh"}})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	attach, err := rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: create.ContainerId})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	pf, err := rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: run.PodSandboxId})
	if err != nil {
		t.Fatalf("PortForward: %v", err)
	}
	wantSandbox := critest.BuildSandboxName(podConfig("plain", nil).Metadata)
	for _, c := range []struct{ what, got, want string }{
		{"sandbox ID", run.PodSandboxId, wantSandbox},
		{"container ID", create.ContainerId, critest.BuildContainerName(&runtimeapi.ContainerMetadata{Name: "app"}, wantSandbox)},
		{"exec URL", exec.Url, streamURL("exec", create.ContainerId)},
		{"attach URL", attach.Url, streamURL("attach", create.ContainerId)},
		{"port-forward URL", pf.Url, streamURL("portforward", run.PodSandboxId)},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
}

// TestErrorsPreserved checks that runtime errors keep code, message and
// details, on raw-forwarded and on hooked methods.
func TestErrorsPreserved(t *testing.T) {
	detailed, err := status.New(codes.ResourceExhausted, "too many pods").WithDetails(&runtimeapi.VersionResponse{RuntimeName: "containerd"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		fakeFn string
		inject error
		call   criCall
		want   *status.Status
	}{
		{"not found raw", "ContainerStatus", status.Error(codes.NotFound, `an error occurred when try to find container "x": not found`),
			func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
				return rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "x"})
			}, status.New(codes.NotFound, `an error occurred when try to find container "x": not found`)},
		{"runtime's own Unavailable unchanged", "ListPodSandbox", status.Error(codes.Unavailable, "runtime busy"),
			func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
				return rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
			}, status.New(codes.Unavailable, "runtime busy")},
		{"runtime's own Unavailable unchanged on a hooked method", "StopPodSandbox", status.Error(codes.Unavailable, "runtime busy"),
			func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
				return rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: fixtureSandbox})
			}, status.New(codes.Unavailable, "runtime busy")},
		{"plain error becomes Unknown as directly", "ListContainers", errors.New("boom"),
			func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
				return rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			}, status.New(codes.Unknown, "boom")},
		{"details kept", "Version", detailed.Err(),
			func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
				return rt.Version(ctx, &runtimeapi.VersionRequest{})
			}, detailed},
		{"hooked run", "RunPodSandbox", status.Error(codes.FailedPrecondition, "failed to setup network for sandbox"),
			func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
				return rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("r", map[string]string{podcontract.LabelReplicate: "true"})})
			}, status.New(codes.FailedPrecondition, "failed to setup network for sandbox")},
		{"hooked stop", "StopPodSandbox", status.Error(codes.DeadlineExceeded, "stop timed out"),
			func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
				return rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: fixtureSandbox})
			}, status.New(codes.DeadlineExceeded, "stop timed out")},
		{"hooked remove", "RemovePodSandbox", status.Error(codes.Internal, "remove failed"),
			func(ctx context.Context, rt runtimeapi.RuntimeServiceClient, _ runtimeapi.ImageServiceClient) (proto.Message, error) {
				return rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: fixtureSandbox})
			}, status.New(codes.Internal, "remove failed")},
		{"image service", "PullImage", status.Error(codes.NotFound, "pull access denied"),
			func(ctx context.Context, _ runtimeapi.RuntimeServiceClient, img runtimeapi.ImageServiceClient) (proto.Message, error) {
				return img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "nope"}})
			}, status.New(codes.NotFound, "pull access denied")},
	}
	e := newTestEnv(t)
	seed(e.fake)
	ctx := testCtx(t)
	rt, img := runtimeapi.NewRuntimeServiceClient(e.viaProxy), runtimeapi.NewImageServiceClient(e.viaProxy)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fakeFn == "PullImage" {
				e.fake.img.InjectError(tc.fakeFn, tc.inject)
			} else {
				e.fake.rt.InjectError(tc.fakeFn, tc.inject)
			}
			_, err := tc.call(ctx, rt, img)
			if got := status.Convert(err); !proto.Equal(got.Proto(), tc.want.Proto()) {
				t.Fatalf("error = %v (details %v), want %v (details %v)", got.Err(), got.Details(), tc.want.Err(), tc.want.Details())
			}
		})
	}
}

// TestMetadataForwarded checks request metadata reaches the runtime and the
// runtime's header and trailer metadata come back, on both paths.
func TestMetadataForwarded(t *testing.T) {
	e := newTestEnv(t)
	seed(e.fake)
	rt := runtimeapi.NewRuntimeServiceClient(e.viaProxy)
	tests := []struct {
		name string
		call func(ctx context.Context, opts ...grpc.CallOption) error
	}{
		{"raw", func(ctx context.Context, opts ...grpc.CallOption) error {
			_, err := rt.Version(ctx, &runtimeapi.VersionRequest{}, opts...)
			return err
		}},
		{"hooked", func(ctx context.Context, opts ...grpc.CallOption) error {
			_, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: fixtureSandbox}, opts...)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(testCtx(t), "x-request-id", tc.name)
			var header, trailer metadata.MD
			if err := tc.call(ctx, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
				t.Fatalf("call: %v", err)
			}
			e.fake.mu.Lock()
			got := e.fake.lastMD.Get("x-request-id")
			e.fake.mu.Unlock()
			if len(got) != 1 || got[0] != tc.name {
				t.Errorf("runtime saw x-request-id %q, want %q", got, tc.name)
			}
			if h := header.Get("x-fake-header"); len(h) != 1 {
				t.Errorf("header x-fake-header not returned: %v", header)
			}
			if tr := trailer.Get("x-fake-trailer"); len(tr) != 1 {
				t.Errorf("trailer x-fake-trailer not returned: %v", trailer)
			}
		})
	}
}

// TestUnknownMethodForwarded checks that methods the proxy does not know are
// forwarded byte-for-byte to the runtime.
func TestUnknownMethodForwarded(t *testing.T) {
	e := newTestEnv(t)
	tests := []struct{ method string }{
		{"/runtime.v1.RuntimeService/SomeFutureMethod"},
		{"/runtime.v1.ImageService/SomeFutureImageMethod"},
		{"/runtime.v2.FutureService/Anything"},
	}
	codec := newBytesCodec()
	for _, tc := range tests {
		t.Run(tc.method, func(t *testing.T) {
			// Not valid protobuf on purpose: nothing may decode it on the way.
			req := &rawBytes{b: []byte("\xff\x00raw bytes for " + tc.method)}
			resp := &rawBytes{}
			var trailer metadata.MD
			err := e.viaProxy.Invoke(testCtx(t), tc.method, req, resp, grpc.ForceCodecV2(codec), grpc.Trailer(&trailer))
			if err != nil {
				t.Fatalf("invoke through proxy: %v", err)
			}
			if string(resp.b) != string(req.b) {
				t.Errorf("echo = %q, want %q", resp.b, req.b)
			}
			if !contains(e.fake.seenUnknown(), tc.method) {
				t.Errorf("runtime's unknown handler did not see %s: %v", tc.method, e.fake.seenUnknown())
			}
			if got := trailer.Get("x-unknown-method"); len(got) != 1 || got[0] != tc.method {
				t.Errorf("trailer = %v, want x-unknown-method %s", trailer, tc.method)
			}
		})
	}
}

// TestGetContainerEventsStreamed checks the server-streaming RPC is forwarded
// message by message with its header and trailer.
func TestGetContainerEventsStreamed(t *testing.T) {
	tests := []struct {
		name   string
		events int
	}{
		{"none", 0},
		{"some", 3},
		{"many", 500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			var want []*runtimeapi.ContainerEventResponse
			for i := range tc.events {
				want = append(want, &runtimeapi.ContainerEventResponse{
					ContainerId:        fmt.Sprintf("ctr-%d", i),
					ContainerEventType: runtimeapi.ContainerEventType(i % 4),
					CreatedAt:          int64(i),
				})
			}
			e.fake.mu.Lock()
			e.fake.events = want
			e.fake.mu.Unlock()
			stream, err := runtimeapi.NewRuntimeServiceClient(e.viaProxy).GetContainerEvents(testCtx(t), &runtimeapi.GetEventsRequest{})
			if err != nil {
				t.Fatalf("GetContainerEvents: %v", err)
			}
			var got []*runtimeapi.ContainerEventResponse
			for {
				ev, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("recv after %d events: %v", len(got), err)
				}
				got = append(got, ev)
			}
			if len(got) != len(want) {
				t.Fatalf("got %d events, want %d", len(got), len(want))
			}
			for i := range got {
				if !proto.Equal(got[i], want[i]) {
					t.Fatalf("event %d = %v, want %v", i, got[i], want[i])
				}
			}
			if h, _ := stream.Header(); len(h.Get("x-events")) != 1 {
				t.Errorf("header not forwarded: %v", h)
			}
			if tr := stream.Trailer().Get("x-events-sent"); len(tr) != 1 || tr[0] != fmt.Sprint(tc.events) {
				t.Errorf("trailer = %v", stream.Trailer())
			}
		})
	}
}

// TestHooks checks AttachPod is called only for labelled pods, with the netns
// path parsed from containerd's verbose info, and DetachPod on stop/remove.
func TestHooks(t *testing.T) {
	tests := []struct {
		name       string
		labels     map[string]string
		wantAttach bool
	}{
		{"labelled", map[string]string{podcontract.LabelReplicate: "true", "app": "redis"}, true},
		{"unlabelled", map[string]string{"app": "web"}, false},
		{"label false", map[string]string{podcontract.LabelReplicate: "false"}, false},
		{"label other case", map[string]string{podcontract.LabelReplicate: "True"}, false},
		{"no labels", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			ctx := testCtx(t)
			rt := runtimeapi.NewRuntimeServiceClient(e.viaProxy)
			cfg := podConfig("redis-0", tc.labels)
			run, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
			if err != nil {
				t.Fatalf("RunPodSandbox: %v", err)
			}
			attached, _ := e.rep.snapshot()
			if !tc.wantAttach {
				if len(attached) != 0 {
					t.Fatalf("AttachPod called for a pod without %s=true: %+v", podcontract.LabelReplicate, attached)
				}
				if contains(e.fake.rt.GetCalls(), "PodSandboxStatus") {
					t.Errorf("proxy read the status of a pod it does not replicate")
				}
			} else {
				if len(attached) != 1 {
					t.Fatalf("AttachPod calls = %d, want 1", len(attached))
				}
				got := attached[0]
				want := podcontract.Pod{
					SandboxID: run.PodSandboxId, UID: "uid-redis-0",
					Meta:      podcontract.Meta{Name: "redis-0", Namespace: "default", Labels: tc.labels, Annotations: cfg.Annotations},
					NetNSPath: fakeNetNS(run.PodSandboxId), IPs: critest.FakePodSandboxIPs,
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("AttachPod(%+v), want %+v", got, want)
				}
			}
			if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: run.PodSandboxId}); err != nil {
				t.Fatalf("StopPodSandbox: %v", err)
			}
			if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: run.PodSandboxId}); err != nil {
				t.Fatalf("RemovePodSandbox: %v", err)
			}
			// Stateless proxy: every stop and remove is passed on.
			if _, detached := e.rep.snapshot(); fmt.Sprint(detached) != fmt.Sprint([]string{run.PodSandboxId, run.PodSandboxId}) {
				t.Errorf("DetachPod calls = %v, want the sandbox on stop and on remove", detached)
			}
		})
	}
}

// TestHookFailureCleansUp checks a failed hook fails RunPodSandbox with a
// clear error and leaves no sandbox behind.
func TestHookFailureCleansUp(t *testing.T) {
	tests := []struct {
		name      string
		attachErr error
		noNetNS   bool
		statusErr error
		wantMsg   string
	}{
		{"replicator fails", errors.New("raft group redis unreachable"), false, nil, "attach to replication: raft group redis unreachable"},
		{"no netns", nil, true, nil, "no pod network namespace"},
		{"status fails", nil, false, status.Error(codes.Unavailable, "status boom"), "read sandbox status"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.rep.attachErr = tc.attachErr
			e.fake.noNetNS = tc.noNetNS
			if tc.statusErr != nil {
				e.fake.rt.InjectError("PodSandboxStatus", tc.statusErr)
			}
			rt := runtimeapi.NewRuntimeServiceClient(e.viaProxy)
			_, err := rt.RunPodSandbox(testCtx(t), &runtimeapi.RunPodSandboxRequest{Config: podConfig("redis-0", map[string]string{podcontract.LabelReplicate: "true"})})
			st := status.Convert(err)
			if st.Code() != codes.FailedPrecondition {
				t.Fatalf("code = %v (%v), want FailedPrecondition", st.Code(), err)
			}
			for _, part := range []string{"smr-cri", "default/redis-0", tc.wantMsg, "stopped and removed"} {
				if !strings.Contains(st.Message(), part) {
					t.Errorf("message %q does not contain %q", st.Message(), part)
				}
			}
			calls := e.fake.rt.GetCalls()
			if !contains(calls, "StopPodSandbox") || !contains(calls, "RemovePodSandbox") {
				t.Errorf("sandbox not stopped and removed; runtime calls %v", calls)
			}
			e.fake.rt.Lock()
			left := len(e.fake.rt.Sandboxes)
			e.fake.rt.Unlock()
			if left != 0 {
				t.Errorf("%d sandboxes left in the runtime, want 0", left)
			}
		})
	}
}

// TestRuntimeDownAndBack checks calls fail at once with Unavailable while the
// runtime is down and succeed again once it is back, without restarting the
// proxy.
func TestRuntimeDownAndBack(t *testing.T) {
	e := newTestEnv(t)
	seed(e.fake)
	rt := runtimeapi.NewRuntimeServiceClient(e.viaProxy)
	ctx := testCtx(t)
	calls := []struct {
		name string
		call func() error
	}{
		{"raw", func() error { _, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); return err }},
		{"hooked", func() error {
			_, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: fixtureSandbox})
			return err
		}},
		{"stream", func() error {
			s, err := rt.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}},
	}
	for _, c := range calls {
		if err := c.call(); err != nil {
			t.Fatalf("%s before stop: %v", c.name, err)
		}
	}

	e.stopFake()
	for _, c := range calls {
		// The context allows 30s: a proxy waiting for the runtime would end in
		// DeadlineExceeded, failing fast gives Unavailable.
		err := c.call()
		st := status.Convert(err)
		if st.Code() != codes.Unavailable {
			t.Fatalf("%s with runtime down: %v, want Unavailable", c.name, err)
		}
		wantPrefix := "smr-cri: container runtime at unix://" + e.runtimeSock + " unavailable: "
		if !strings.HasPrefix(st.Message(), wantPrefix) {
			t.Errorf("%s: message %q, want prefix %q", c.name, st.Message(), wantPrefix)
		}
	}

	// Same socket path, new server: the proxy reconnects by itself.
	e.stopFake = serveFake(t, e.fake, e.runtimeSock)
	for _, c := range calls {
		var err error
		for attempt := 0; attempt < 300; attempt++ {
			if err = c.call(); status.Code(err) != codes.Unavailable {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("%s after the runtime came back: %v", c.name, err)
		}
	}
}

// A CreateContainer reaches a ContainerWatcher Replicator before the runtime
// creates the container (so a restarted app is fenced first), with the
// sandbox, container name and attempt; the runtime's answer passes through.
func TestCreateContainerHookRunsBeforeForwarding(t *testing.T) {
	e := newTestEnv(t)
	seed(e.fake)
	ctx := testCtx(t)
	rt := runtimeapi.NewRuntimeServiceClient(e.viaProxy)
	run, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("plain", nil)})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	direct := runtimeapi.NewRuntimeServiceClient(e.direct)
	seeded, err := direct.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n := len(seeded.GetContainers())
	var before []int
	e.rep.beforeCreate = func() {
		l, err := direct.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		if err != nil {
			t.Errorf("list containers in the hook: %v", err)
		}
		before = append(before, len(l.GetContainers()))
	}
	var ids []string
	for attempt := range uint32(2) {
		create, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: run.PodSandboxId, SandboxConfig: podConfig("plain", nil),
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app", Attempt: attempt}, Image: &runtimeapi.ImageSpec{Image: fixtureImage}}})
		if err != nil {
			t.Fatalf("CreateContainer attempt %d: %v", attempt, err)
		}
		ids = append(ids, create.ContainerId)
	}
	e.rep.mu.Lock()
	got := e.rep.creating
	e.rep.mu.Unlock()
	want := []string{run.PodSandboxId + "/app#0", run.PodSandboxId + "/app#1"}
	if !slices.Equal(got, want) {
		t.Fatalf("hook calls %q, want %q", got, want)
	}
	if !slices.Equal(before, []int{n, n + 1}) {
		t.Fatalf("containers in the runtime during the hook: %v, want [%d %d] (hook before forwarding)", before, n, n+1)
	}
	if ids[0] == "" || ids[0] == ids[1] {
		t.Fatalf("container IDs %q not passed through", ids)
	}
}
