package cri

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	critest "k8s.io/cri-api/pkg/apis/testing"

	"github.com/smr-io/smr-cri/replication/podcontract"
)

// fakeRuntime serves the recording fakes of k8s.io/cri-api/pkg/apis/testing
// over gRPC, as containerd would. The fakes do not fill verbose info, streaming
// URLs or container events; the adapter adds those the way containerd does so
// the proxy can be checked against realistic answers.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
	rt  *critest.FakeRuntimeService
	img *critest.FakeImageService

	mu      sync.Mutex
	events  []*runtimeapi.ContainerEventResponse
	unknown []string    // full methods seen by the UnknownServiceHandler
	lastMD  metadata.MD // metadata of the last call
	noNetNS bool        // answer verbose status without a network namespace
	hold    bool        // keep GetContainerEvents open until the caller goes away
}

func newFakeRuntime() *fakeRuntime {
	return &fakeRuntime{rt: critest.NewFakeRuntimeService(), img: critest.NewFakeImageService()}
}

// fakeNetNS is the netns path the fake reports for a sandbox, in the form
// containerd's CNI setup uses.
func fakeNetNS(id string) string { return "/var/run/netns/cni-" + id }

// containerdSandboxInfo is the info["info"] JSON of containerd 1.6's verbose
// PodSandboxStatus, trimmed to a realistic subset.
func containerdSandboxInfo(id string, withNetNS bool) string {
	netns := `{"type":"network","path":"` + fakeNetNS(id) + `"},`
	if !withNetNS {
		netns = ""
	}
	return `{"pid":4242,"processStatus":"running","netNamespaceClosed":false,` +
		`"image":"localhost/pause:smr","snapshotKey":"` + id + `","snapshotter":"overlayfs",` +
		`"runtimeHandler":"","runtimeType":"io.containerd.runc.v2","runtimeOptions":null,` +
		`"config":{"metadata":{"name":"redis-0","uid":"u1","namespace":"default"},"labels":{"smr.io/replicate":"true"}},` +
		`"runtimeSpec":{"ociVersion":"1.0.2-dev","process":{"user":{"uid":65535,"gid":65535},"args":["/pause"],"cwd":"/"},` +
		`"root":{"path":"rootfs","readonly":true},"hostname":"redis-0",` +
		`"linux":{"resources":{"cpu":{"shares":2}},"cgroupsPath":"/k8s.io/` + id + `",` +
		`"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},` + netns +
		`{"type":"cgroup"}],"maskedPaths":["/proc/acpi"],"readonlyPaths":["/proc/bus"]}},` +
		`"cniResult":{"Interfaces":{"eth0":{"IPConfigs":[{"IP":"198.19.1.5","Gateway":"198.19.1.1"}],"Mac":"aa:bb:cc:dd:ee:ff","Sandbox":"` + fakeNetNS(id) + `"}},"DNS":[{},{}],"Routes":null}}`
}

// serveFake serves f on a unix socket in dir and returns the socket path and
// a stop function.
func serveFake(t testing.TB, f *fakeRuntime, sock string) (stop func()) {
	t.Helper()
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen fake runtime: %v", err)
	}
	srv := grpc.NewServer(
		grpc.ForceServerCodecV2(newBytesCodec()),
		grpc.UnknownServiceHandler(f.unknownHandler),
		grpc.ChainUnaryInterceptor(f.recordMetadata),
	)
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	runtimeapi.RegisterImageServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	return func() {
		srv.Stop()
		<-done
	}
}

func (f *fakeRuntime) recordMetadata(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.lastMD = md
	f.mu.Unlock()
	// Answer with header and trailer metadata, which the proxy must return.
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-fake-header", "h"))
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-fake-trailer", "t"))
	return h(ctx, req)
}

// unknownHandler answers any method the fake does not implement: it echoes
// the raw request bytes back, so byte-for-byte forwarding can be checked.
func (f *fakeRuntime) unknownHandler(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	f.mu.Lock()
	f.unknown = append(f.unknown, method)
	f.mu.Unlock()
	var in rawBytes
	if err := ss.RecvMsg(&in); err != nil {
		return err
	}
	ss.SetTrailer(metadata.Pairs("x-unknown-method", method))
	return ss.SendMsg(&in)
}

// imageCalls returns the image fake's recorded calls (it has no getter).
func (f *fakeRuntime) imageCalls() []string {
	f.img.Lock()
	defer f.img.Unlock()
	return append([]string(nil), f.img.Called...)
}

func (f *fakeRuntime) seenUnknown() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.unknown...)
}

// --- RuntimeService

func (f *fakeRuntime) Version(ctx context.Context, r *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return f.rt.Version(ctx, r.Version)
}

func (f *fakeRuntime) Status(ctx context.Context, r *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return f.rt.Status(ctx, r.Verbose)
}

func (f *fakeRuntime) RunPodSandbox(ctx context.Context, r *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	id, err := f.rt.RunPodSandbox(ctx, r.Config, r.RuntimeHandler)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: id}, nil
}

func (f *fakeRuntime) StopPodSandbox(ctx context.Context, r *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	return &runtimeapi.StopPodSandboxResponse{}, f.rt.StopPodSandbox(ctx, r.PodSandboxId)
}

func (f *fakeRuntime) RemovePodSandbox(ctx context.Context, r *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	return &runtimeapi.RemovePodSandboxResponse{}, f.rt.RemovePodSandbox(ctx, r.PodSandboxId)
}

func (f *fakeRuntime) PodSandboxStatus(ctx context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	resp, err := f.rt.PodSandboxStatus(ctx, r.PodSandboxId, r.Verbose)
	if err != nil {
		return nil, err
	}
	if r.Verbose {
		f.mu.Lock()
		withNetNS := !f.noNetNS
		f.mu.Unlock()
		resp.Info = map[string]string{"info": containerdSandboxInfo(r.PodSandboxId, withNetNS)}
	}
	return resp, nil
}

func (f *fakeRuntime) ListPodSandbox(ctx context.Context, r *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	items, err := f.rt.ListPodSandbox(ctx, r.Filter)
	return &runtimeapi.ListPodSandboxResponse{Items: items}, err
}

func (f *fakeRuntime) CreateContainer(ctx context.Context, r *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	id, err := f.rt.CreateContainer(ctx, r.PodSandboxId, r.Config, r.SandboxConfig)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: id}, nil
}

func (f *fakeRuntime) StartContainer(ctx context.Context, r *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	return &runtimeapi.StartContainerResponse{}, f.rt.StartContainer(ctx, r.ContainerId)
}

func (f *fakeRuntime) StopContainer(ctx context.Context, r *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	return &runtimeapi.StopContainerResponse{}, f.rt.StopContainer(ctx, r.ContainerId, r.Timeout)
}

func (f *fakeRuntime) RemoveContainer(ctx context.Context, r *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	return &runtimeapi.RemoveContainerResponse{}, f.rt.RemoveContainer(ctx, r.ContainerId)
}

func (f *fakeRuntime) ListContainers(ctx context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	items, err := f.rt.ListContainers(ctx, r.Filter)
	return &runtimeapi.ListContainersResponse{Containers: items}, err
}

func (f *fakeRuntime) ContainerStatus(ctx context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	return f.rt.ContainerStatus(ctx, r.ContainerId, r.Verbose)
}

func (f *fakeRuntime) UpdateContainerResources(ctx context.Context, r *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	return &runtimeapi.UpdateContainerResourcesResponse{}, f.rt.UpdateContainerResources(ctx, r.ContainerId, &runtimeapi.ContainerResources{Linux: r.Linux})
}

func (f *fakeRuntime) ReopenContainerLog(ctx context.Context, r *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	return &runtimeapi.ReopenContainerLogResponse{}, f.rt.ReopenContainerLog(ctx, r.ContainerId)
}

func (f *fakeRuntime) ExecSync(ctx context.Context, r *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	stdout, stderr, err := f.rt.ExecSync(ctx, r.ContainerId, r.Cmd, time.Duration(r.Timeout)*time.Second)
	if err != nil {
		return nil, err
	}
	// Echo the command so the test sees the request arrived intact.
	return &runtimeapi.ExecSyncResponse{Stdout: append(stdout, fmt.Sprint(r.Cmd)...), Stderr: stderr, ExitCode: 3}, nil
}

// streamURL is the URL containerd's streaming server would hand out.
func streamURL(kind, id string) string {
	return "http://127.0.0.1:38591/" + kind + "/" + id + "-Tok3n"
}

func (f *fakeRuntime) Exec(ctx context.Context, r *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	if _, err := f.rt.Exec(ctx, r); err != nil {
		return nil, err
	}
	return &runtimeapi.ExecResponse{Url: streamURL("exec", r.ContainerId)}, nil
}

func (f *fakeRuntime) Attach(ctx context.Context, r *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	if _, err := f.rt.Attach(ctx, r); err != nil {
		return nil, err
	}
	return &runtimeapi.AttachResponse{Url: streamURL("attach", r.ContainerId)}, nil
}

func (f *fakeRuntime) PortForward(ctx context.Context, r *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	if _, err := f.rt.PortForward(ctx, r); err != nil {
		return nil, err
	}
	return &runtimeapi.PortForwardResponse{Url: streamURL("portforward", r.PodSandboxId)}, nil
}

func (f *fakeRuntime) ContainerStats(ctx context.Context, r *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	st, err := f.rt.ContainerStats(ctx, r.ContainerId)
	return &runtimeapi.ContainerStatsResponse{Stats: st}, err
}

func (f *fakeRuntime) ListContainerStats(ctx context.Context, r *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	st, err := f.rt.ListContainerStats(ctx, r.Filter)
	return &runtimeapi.ListContainerStatsResponse{Stats: st}, err
}

func (f *fakeRuntime) PodSandboxStats(ctx context.Context, r *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	st, err := f.rt.PodSandboxStats(ctx, r.PodSandboxId)
	return &runtimeapi.PodSandboxStatsResponse{Stats: st}, err
}

func (f *fakeRuntime) ListPodSandboxStats(ctx context.Context, r *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	st, err := f.rt.ListPodSandboxStats(ctx, r.Filter)
	return &runtimeapi.ListPodSandboxStatsResponse{Stats: st}, err
}

func (f *fakeRuntime) UpdateRuntimeConfig(ctx context.Context, r *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	return &runtimeapi.UpdateRuntimeConfigResponse{}, f.rt.UpdateRuntimeConfig(ctx, r.RuntimeConfig)
}

func (f *fakeRuntime) CheckpointContainer(ctx context.Context, r *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	return &runtimeapi.CheckpointContainerResponse{}, f.rt.CheckpointContainer(ctx, r)
}

func (f *fakeRuntime) ListMetricDescriptors(ctx context.Context, _ *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	d, err := f.rt.ListMetricDescriptors(ctx)
	return &runtimeapi.ListMetricDescriptorsResponse{Descriptors: d}, err
}

func (f *fakeRuntime) ListPodSandboxMetrics(ctx context.Context, _ *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	m, err := f.rt.ListPodSandboxMetrics(ctx)
	return &runtimeapi.ListPodSandboxMetricsResponse{PodMetrics: m}, err
}

func (f *fakeRuntime) RuntimeConfig(ctx context.Context, _ *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	return f.rt.RuntimeConfig(ctx)
}

// GetContainerEvents streams the configured events, then ends the stream
// with a trailer.
func (f *fakeRuntime) GetContainerEvents(_ *runtimeapi.GetEventsRequest, ss grpc.ServerStreamingServer[runtimeapi.ContainerEventResponse]) error {
	f.mu.Lock()
	events := f.events
	f.mu.Unlock()
	if err := ss.SendHeader(metadata.Pairs("x-events", "begin")); err != nil {
		return err
	}
	for _, e := range events {
		if err := ss.Send(e); err != nil {
			return err
		}
	}
	f.mu.Lock()
	hold := f.hold
	f.mu.Unlock()
	if hold {
		<-ss.Context().Done()
		return ss.Context().Err()
	}
	ss.SetTrailer(metadata.Pairs("x-events-sent", fmt.Sprint(len(events))))
	return nil
}

// --- ImageService

func (f *fakeRuntime) ListImages(ctx context.Context, r *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	imgs, err := f.img.ListImages(ctx, r.Filter)
	return &runtimeapi.ListImagesResponse{Images: imgs}, err
}

func (f *fakeRuntime) ImageStatus(ctx context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	return f.img.ImageStatus(ctx, r.Image, r.Verbose)
}

func (f *fakeRuntime) PullImage(ctx context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	ref, err := f.img.PullImage(ctx, r.Image, r.Auth, r.SandboxConfig)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.PullImageResponse{ImageRef: ref}, nil
}

func (f *fakeRuntime) RemoveImage(ctx context.Context, r *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	return &runtimeapi.RemoveImageResponse{}, f.img.RemoveImage(ctx, r.Image)
}

func (f *fakeRuntime) ImageFsInfo(ctx context.Context, _ *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	return f.img.ImageFsInfo(ctx)
}

// --- test harness

// rawBytes is a message carried as raw bytes by the test's own codec.
type rawBytes struct{ b []byte }

// testEnv is a fake runtime behind a proxy, both on unix sockets in a temp
// dir, and clients for both.
type testEnv struct {
	fake        *fakeRuntime
	runtimeSock string
	proxySock   string
	stopFake    func()
	proxy       *Proxy
	rep         *recordingReplicator
	direct      *grpc.ClientConn // to the fake
	viaProxy    *grpc.ClientConn // to the proxy
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	return newTestEnvWith(t, Options{})
}

// newTestEnvWith is newTestEnv with extra proxy options; the endpoint and
// replicator are set here.
func newTestEnvWith(t testing.TB, opts Options) *testEnv {
	t.Helper()
	dir := t.TempDir()
	e := &testEnv{
		fake:        newFakeRuntime(),
		runtimeSock: filepath.Join(dir, "runtime.sock"),
		proxySock:   filepath.Join(dir, "proxy", "smr-cri.sock"),
		rep:         &recordingReplicator{},
	}
	e.stopFake = serveFake(t, e.fake, e.runtimeSock)
	opts.RuntimeEndpoint = "unix://" + e.runtimeSock
	opts.Replicator = e.rep
	p, err := New(opts)
	if err != nil {
		t.Fatalf("new proxy: %v", err)
	}
	lis, err := Listen(e.proxySock)
	if err != nil {
		t.Fatalf("listen proxy: %v", err)
	}
	e.proxy = p
	go func() { _ = p.Serve(lis) }()
	e.direct = dialTest(t, e.runtimeSock)
	e.viaProxy = dialTest(t, e.proxySock)
	t.Cleanup(func() {
		_ = e.direct.Close()
		_ = e.viaProxy.Close()
		p.Shutdown(5 * time.Second)
		e.stopFake()
	})
	return e
}

func dialTest(t testing.TB, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	return conn
}

// recordingReplicator records hook calls and can be made to fail.
type recordingReplicator struct {
	mu        sync.Mutex
	attached  []podcontract.Pod
	detached  []string
	attachErr error
	// creating records ContainerCreating calls; beforeCreate runs inside
	// the hook (tests check what the runtime has at that moment).
	creating     []string
	beforeCreate func()
}

func (r *recordingReplicator) ContainerCreating(_ context.Context, sandboxID, name string, attempt uint32) {
	r.mu.Lock()
	r.creating = append(r.creating, fmt.Sprintf("%s/%s#%d", sandboxID, name, attempt))
	f := r.beforeCreate
	r.mu.Unlock()
	if f != nil {
		f()
	}
}

func (r *recordingReplicator) AttachPod(_ context.Context, pod podcontract.Pod) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.attachErr != nil {
		return r.attachErr
	}
	r.attached = append(r.attached, pod)
	return nil
}

func (r *recordingReplicator) DetachPod(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.detached = append(r.detached, id)
	return nil
}

func (r *recordingReplicator) snapshot() ([]podcontract.Pod, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]podcontract.Pod(nil), r.attached...), append([]string(nil), r.detached...)
}

// bytesCodec is the tests' own raw codec (independent of the proxy's): it
// carries *rawBytes as is and everything else as protobuf.
type bytesCodec struct{ proto encoding.CodecV2 }

func newBytesCodec() bytesCodec { return bytesCodec{proto: encoding.GetCodecV2(protoenc.Name)} }

func (c bytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(*rawBytes); ok {
		return mem.BufferSlice{mem.SliceBuffer(append([]byte(nil), b.b...))}, nil
	}
	return c.proto.Marshal(v)
}

func (c bytesCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if b, ok := v.(*rawBytes); ok {
		b.b = data.Materialize()
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (c bytesCodec) Name() string { return protoenc.Name }
