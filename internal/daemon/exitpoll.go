package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Container exits are found by polling the runtime, never by a second
// GetContainerEvents subscription (on containerd 1.7 a second subscriber
// can take events away from kubelet's). Every ExitPollInterval the poller
// lists the containers of the attached replicated sandboxes and asks
// ContainerStatus about each exited one it has not handled: an app
// container that exited fences its replica at once (replication's repair
// path, cause container-exit), before kubelet re-creates it empty.

// DefaultExitPollInterval is serve's --container-poll-interval default.
const DefaultExitPollInterval = 2 * time.Second

// containerRuntime is what the exit poller asks the runtime.
type containerRuntime interface {
	ListContainers(ctx context.Context, in *runtimeapi.ListContainersRequest, opts ...grpc.CallOption) (*runtimeapi.ListContainersResponse, error)
	ContainerStatus(ctx context.Context, in *runtimeapi.ContainerStatusRequest, opts ...grpc.CallOption) (*runtimeapi.ContainerStatusResponse, error)
}

// exitSink receives the exits that fence a replica (replication.Manager).
type exitSink interface {
	ContainerExited(ctx context.Context, sandboxID, containerID, name string, attempt uint32, detail string)
}

// exitPoller polls the containers of the attached sandboxes.
type exitPoller struct {
	rt       containerRuntime
	sink     exitSink
	attached func() []string
	log      *slog.Logger
	// handled are the exited containers already decided on (by ID): an
	// exit is reported once.
	handled map[string]bool
}

// run polls every interval until ctx ends.
func (p *exitPoller) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := p.poll(ctx)
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			p.log.Warn("poll the containers of replicated pods (will retry)", "err", err)
		case err == nil && failing:
			p.log.Info("polling the containers of replicated pods again")
		}
		failing = err != nil
	}
}

// poll makes one pass: one ListContainers, then a ContainerStatus per new
// exit of a replicated pod's container.
func (p *exitPoller) poll(ctx context.Context) error {
	if p.handled == nil {
		p.handled = map[string]bool{}
	}
	attached := map[string]bool{}
	for _, id := range p.attached() {
		attached[id] = true
	}
	if len(attached) == 0 {
		clear(p.handled)
		return nil
	}
	resp, err := p.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	bySandbox := map[string][]*runtimeapi.Container{}
	listed := map[string]bool{}
	for _, c := range resp.GetContainers() {
		listed[c.GetId()] = true
		if attached[c.GetPodSandboxId()] {
			bySandbox[c.GetPodSandboxId()] = append(bySandbox[c.GetPodSandboxId()], c)
		}
	}
	for id := range p.handled {
		if !listed[id] {
			delete(p.handled, id)
		}
	}
	for sandbox, ctrs := range bySandbox {
		for _, c := range exitCandidates(ctrs, p.handled) {
			st, err := p.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.GetId()})
			if err != nil {
				return fmt.Errorf("status of container %s of sandbox %s: %w", c.GetId(), sandbox, err)
			}
			d := classifyExit(st.GetStatus(), ctrs)
			if !d.settled {
				continue // ask again at the next pass
			}
			p.handled[c.GetId()] = true
			if !d.appExit {
				p.log.Debug("container of a replicated pod finished before the next one started (init container)",
					"sandbox", sandbox, "container", c.GetMetadata().GetName())
				continue
			}
			p.log.Warn("container of a replicated pod exited: fencing its replica", "sandbox", sandbox,
				"container", c.GetMetadata().GetName(), "attempt", c.GetMetadata().GetAttempt(), "detail", d.detail)
			go p.sink.ContainerExited(context.WithoutCancel(ctx), sandbox, c.GetId(), c.GetMetadata().GetName(),
				c.GetMetadata().GetAttempt(), d.detail)
		}
	}
	return nil
}

// exitCandidates are the containers of one sandbox to ask about: the latest
// attempt of each container name, exited, not handled yet. Earlier attempts
// are exits kubelet already re-created (the CreateContainer hook saw them).
func exitCandidates(ctrs []*runtimeapi.Container, handled map[string]bool) []*runtimeapi.Container {
	latest := map[string]*runtimeapi.Container{}
	for _, c := range ctrs {
		name := c.GetMetadata().GetName()
		cur, ok := latest[name]
		if !ok || c.GetMetadata().GetAttempt() > cur.GetMetadata().GetAttempt() ||
			(c.GetMetadata().GetAttempt() == cur.GetMetadata().GetAttempt() && c.GetCreatedAt() > cur.GetCreatedAt()) {
			latest[name] = c
		}
	}
	var out []*runtimeapi.Container
	for _, c := range ctrs {
		if latest[c.GetMetadata().GetName()] == c && c.GetState() == runtimeapi.ContainerState_CONTAINER_EXITED && !handled[c.GetId()] {
			out = append(out, c)
		}
	}
	return out
}

// exitDecision: settled once the exit can be judged; appExit if it fences
// the replica.
type exitDecision struct {
	settled, appExit bool
	detail           string
}

// classifyExit judges an exited container of a replicated pod by what the
// runtime knows (kubelet does not mark init containers): a container of
// another name created after it finished means it was an init container
// that completed (init containers finish before the next one is created);
// a clean exit (code 0) while nothing else of the pod runs is undecided
// (an init container just finished, or the app shut itself down: the next
// creation tells, and a re-created app is repaired by the CreateContainer
// hook); any other exit is the app's (killed, crashed, OOM, stopped while
// other containers run).
func classifyExit(st *runtimeapi.ContainerStatus, sandbox []*runtimeapi.Container) exitDecision {
	name := st.GetMetadata().GetName()
	running := false
	for _, c := range sandbox {
		if c.GetMetadata().GetName() == name {
			continue
		}
		if c.GetCreatedAt() > st.GetFinishedAt() {
			return exitDecision{settled: true}
		}
		running = running || c.GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING
	}
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
		return exitDecision{} // listed exited, re-checked: ask again
	}
	if st.GetExitCode() == 0 && !running {
		return exitDecision{}
	}
	detail := fmt.Sprintf("exit code %d", st.GetExitCode())
	if r := st.GetReason(); r != "" {
		detail += ", reason " + r
	}
	if st.GetFinishedAt() > 0 {
		detail += ", finished " + time.Unix(0, st.GetFinishedAt()).UTC().Format(time.RFC3339Nano)
	}
	return exitDecision{settled: true, appExit: true, detail: detail}
}
