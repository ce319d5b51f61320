package cri

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/replication/podcontract"
)

// cleanupTimeout bounds stopping and removing a sandbox whose hook failed.
// It does not inherit the caller's deadline, which may be nearly spent.
const cleanupTimeout = 2 * time.Minute

// hookedMethods are the RuntimeService methods the proxy decodes; every other
// method goes to the raw forwarder.
var hookedMethods = map[string]bool{
	"RunPodSandbox":    true,
	"StopPodSandbox":   true,
	"RemovePodSandbox": true,
	"CreateContainer":  true,
}

// sandboxService serves the hooked pod sandbox RPCs. It embeds the
// Unimplemented server only to satisfy RuntimeServiceServer: the service
// description it is registered with (serviceDescs) routes only the hooked
// methods to it.
type sandboxService struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	p *Proxy
}

var _ runtimeapi.RuntimeServiceServer = (*sandboxService)(nil)

// call runs one typed downstream call with the caller's metadata, returns the
// runtime's headers and trailers to the caller, and maps errors.
func call[Req, Resp any](ctx context.Context, p *Proxy, fn func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	var header, trailer metadata.MD
	callCtx, origin := withOrigin(outgoingContext(ctx))
	resp, err := fn(callCtx, req, grpc.Header(&header), grpc.Trailer(&trailer))
	if len(header) > 0 && err == nil {
		_ = grpc.SetHeader(ctx, header)
	}
	if len(trailer) > 0 {
		_ = grpc.SetTrailer(ctx, trailer)
	}
	return resp, p.runtimeErr(err, origin)
}

// RunPodSandbox creates the sandbox in the runtime and, for a pod labelled
// smr.io/replicate=true, hands it to the Replicator. If that fails the sandbox
// is stopped and removed again and the call fails with FailedPrecondition
// (the pod cannot run as asked; kubelet retries RunPodSandbox later) and a
// message naming smr-cri and the cause.
func (s *sandboxService) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	resp, err := call(ctx, s.p, s.p.runtime.RunPodSandbox, req)
	if err != nil || !podcontract.WantsReplication(req.GetConfig().GetLabels()) {
		return resp, err
	}
	id := resp.GetPodSandboxId()
	pod, err := s.attach(ctx, id, req.GetConfig())
	if err != nil {
		meta := req.GetConfig().GetMetadata()
		msg := fmt.Sprintf("smr-cri: pod %s/%s (sandbox %s) labelled %s=%s: %v",
			meta.GetNamespace(), meta.GetName(), id, podcontract.LabelReplicate, podcontract.ValueReplicate, err)
		if cerr := s.removeSandbox(ctx, id); cerr != nil {
			msg += fmt.Sprintf("; cleanup failed, the sandbox may be left behind: %v", cerr)
		} else {
			msg += "; the sandbox was stopped and removed"
		}
		s.p.log.ErrorContext(ctx, "replication hook failed", "sandbox", id, "error", msg)
		return nil, status.Error(codes.FailedPrecondition, msg)
	}
	s.p.log.InfoContext(ctx, "pod handed to replication", "sandbox", id, "pod", pod.Namespace+"/"+pod.Name, "netns", pod.NetNSPath, "ips", pod.IPs)
	return resp, nil
}

// attach reads the sandbox's netns and IPs from the runtime and calls
// AttachPod.
func (s *sandboxService) attach(ctx context.Context, id string, cfg *runtimeapi.PodSandboxConfig) (podcontract.Pod, error) {
	st, err := s.p.runtime.PodSandboxStatus(outgoingContext(ctx), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return podcontract.Pod{}, fmt.Errorf("read sandbox status: %w", err)
	}
	pod, err := podInfo(id, cfg, st)
	if err != nil {
		return podcontract.Pod{}, fmt.Errorf("find pod network: %w", err)
	}
	if err := s.p.replicator.AttachPod(ctx, pod); err != nil {
		return podcontract.Pod{}, fmt.Errorf("attach to replication: %w", err)
	}
	return pod, nil
}

// removeSandbox stops and removes a sandbox after a failed hook.
func (s *sandboxService) removeSandbox(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(outgoingContext(ctx)), cleanupTimeout)
	defer cancel()
	if _, err := s.p.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("stop sandbox: %w", err)
	}
	if _, err := s.p.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("remove sandbox: %w", err)
	}
	return nil
}

// StopPodSandbox detaches the pod from replication first (its listeners live
// in the netns that stopping tears down), then stops it in the runtime.
func (s *sandboxService) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	s.detach(ctx, req.GetPodSandboxId())
	return call(ctx, s.p, s.p.runtime.StopPodSandbox, req)
}

// RemovePodSandbox removes the sandbox in the runtime, then detaches it again
// (a sandbox may be removed without a stop; detaching is idempotent).
func (s *sandboxService) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	resp, err := call(ctx, s.p, s.p.runtime.RemovePodSandbox, req)
	if err == nil {
		s.detach(ctx, req.GetPodSandboxId())
	}
	return resp, err
}

// detach calls DetachPod and only logs its failure: tearing a pod down must
// never be blocked by replication, and containerd stays the source of truth.
func (s *sandboxService) detach(ctx context.Context, id string) {
	s.p.log.DebugContext(ctx, "detach sandbox from replication", "sandbox", id)
	if err := s.p.replicator.DetachPod(ctx, id); err != nil {
		s.p.log.WarnContext(ctx, "replication detach failed", "sandbox", id, "error", err)
	}
}

// CreateContainer tells a ContainerWatcher Replicator that a container of
// the sandbox is being created, BEFORE forwarding: a restarted app container
// starts empty, and the replica stops feeding and reading it first. The
// request and the runtime's answer pass through unchanged.
func (s *sandboxService) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	if w, ok := s.p.replicator.(ContainerWatcher); ok {
		w.ContainerCreating(ctx, req.GetPodSandboxId(), req.GetConfig().GetMetadata().GetName(), req.GetConfig().GetMetadata().GetAttempt())
	}
	return call(ctx, s.p, s.p.runtime.CreateContainer, req)
}
