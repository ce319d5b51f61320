package cri

import (
	"context"
	"log/slog"
	"sync"

	"github.com/smr-io/smr-cri/replication/podcontract"
)

// Replicator is what the proxy needs from the replication side. It is called
// after containerd has created a labelled pod's sandbox and when any sandbox
// is stopped or removed.
type Replicator interface {
	// AttachPod starts replicating a pod. An error fails the pod's
	// RunPodSandbox; the proxy then stops and removes the sandbox.
	AttachPod(ctx context.Context, pod podcontract.Pod) error
	// DetachPod stops replicating a sandbox. It is called for every stopped
	// or removed sandbox (the proxy keeps no state), may be called more than
	// once for the same ID and must ignore sandboxes it does not know.
	DetachPod(ctx context.Context, sandboxID string) error
}

// ContainerWatcher is implemented by Replicators that follow the containers
// of attached pods. ContainerCreating is called before the proxy forwards a
// CreateContainer of any container in a sandbox (the Replicator ignores
// sandboxes it does not replicate): attempt > 0 means kubelet restarts that
// container inside the same sandbox, so the app in it starts empty and the
// replica must stop feeding and reading it before the new container exists.
// It must not block for long and cannot fail the call: the proxy forwards
// every call unchanged.
type ContainerWatcher interface {
	ContainerCreating(ctx context.Context, sandboxID, container string, attempt uint32)
}

// LoggingReplicator logs what replication would do. It is the default until
// the replication side is wired in.
type LoggingReplicator struct {
	Log *slog.Logger

	mu       sync.Mutex
	attached map[string]bool // only to log detaches of pods it attached at info level
}

var _ Replicator = (*LoggingReplicator)(nil)

// NewLoggingReplicator returns a LoggingReplicator writing to log.
func NewLoggingReplicator(log *slog.Logger) *LoggingReplicator {
	return &LoggingReplicator{Log: log, attached: map[string]bool{}}
}

func (r *LoggingReplicator) AttachPod(ctx context.Context, pod podcontract.Pod) error {
	r.mu.Lock()
	r.attached[pod.SandboxID] = true
	r.mu.Unlock()
	r.Log.InfoContext(ctx, "would attach pod to replication",
		"sandbox", pod.SandboxID, "pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID,
		"netns", pod.NetNSPath, "ips", pod.IPs)
	return nil
}

func (r *LoggingReplicator) DetachPod(ctx context.Context, sandboxID string) error {
	r.mu.Lock()
	known := r.attached[sandboxID]
	delete(r.attached, sandboxID)
	r.mu.Unlock()
	level := slog.LevelDebug
	if known {
		level = slog.LevelInfo
	}
	r.Log.Log(ctx, level, "would detach pod from replication", "sandbox", sandboxID, "attached", known)
	return nil
}
