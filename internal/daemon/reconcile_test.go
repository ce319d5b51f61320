package daemon

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/freeport"
)

// fakeRuntime serves the two CRI calls Reconcile makes, from a table of
// sandboxes, honouring the state and label filter as containerd does.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	mu        sync.Mutex
	sandboxes map[string]*runtimeapi.PodSandboxStatusResponse
}

func (f *fakeRuntime) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &runtimeapi.ListPodSandboxResponse{}
	for id, st := range f.sandboxes {
		s := st.GetStatus()
		if want := req.GetFilter().GetState(); want != nil && want.GetState() != s.GetState() {
			continue
		}
		match := true
		for k, v := range req.GetFilter().GetLabelSelector() {
			match = match && s.GetLabels()[k] == v
		}
		if match {
			resp.Items = append(resp.Items, &runtimeapi.PodSandbox{Id: id, Metadata: s.GetMetadata(), State: s.GetState(), Labels: s.GetLabels()})
		}
	}
	return resp, nil
}

func (f *fakeRuntime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.sandboxes[req.GetPodSandboxId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "sandbox %s not found", req.GetPodSandboxId())
	}
	return st, nil
}

func (f *fakeRuntime) set(id string, st *runtimeapi.PodSandboxStatusResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st == nil {
		delete(f.sandboxes, id)
		return
	}
	f.sandboxes[id] = st
}

func sandboxStatus(pod podcontract.Pod, state runtimeapi.PodSandboxState, info string) *runtimeapi.PodSandboxStatusResponse {
	return &runtimeapi.PodSandboxStatusResponse{
		Status: &runtimeapi.PodSandboxStatus{Id: pod.SandboxID, State: state,
			Metadata: &runtimeapi.PodSandboxMetadata{Name: pod.Name, Namespace: pod.Namespace, Uid: pod.UID},
			Labels:   pod.Labels, Annotations: pod.Annotations,
			Network: &runtimeapi.PodSandboxNetworkStatus{Ip: pod.IPs[0]}},
		Info: map[string]string{"info": info},
	}
}

// serveFakeRuntime serves fr's RuntimeService on a unix socket until the
// test ends (or srv is stopped) and returns its CRI endpoint.
func serveFakeRuntime(t *testing.T) (fr *fakeRuntime, srv *grpc.Server, endpoint string) {
	t.Helper()
	fr = &fakeRuntime{sandboxes: map[string]*runtimeapi.PodSandboxStatusResponse{}}
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv = grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, fr)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return fr, srv, "unix://" + sock
}

const netnsInfo = `{"runtimeSpec":{"linux":{"namespaces":[{"type":"network","path":"/var/run/netns/fake"}]}}}`

// Reconcile attaches the READY replicated sandboxes (a broken one is logged
// and does not stop the others), leaves unlabelled and not-ready ones alone,
// and detaches attached sandboxes that stopped or disappeared.
func TestReconcile(t *testing.T) {
	ctx := context.Background()
	fr, srv, endpoint := serveFakeRuntime(t)
	app := newCounterApp(t)
	d := newLoopbackDaemonWithRuntime(t, t.TempDir(), app, endpoint)
	defer d.Close(ctx)

	good := onePod("sb-good", freeport.PortT(t))
	broken := onePod("sb-broken", freeport.PortT(t))
	plain := onePod("sb-plain", freeport.PortT(t))
	plain.Labels = map[string]string{"app": "plain"}
	stopped := onePod("sb-stopped", freeport.PortT(t))
	fr.set(good.SandboxID, sandboxStatus(good, runtimeapi.PodSandboxState_SANDBOX_READY, netnsInfo))
	fr.set(broken.SandboxID, sandboxStatus(broken, runtimeapi.PodSandboxState_SANDBOX_READY, `{"pid":1}`))
	fr.set(plain.SandboxID, sandboxStatus(plain, runtimeapi.PodSandboxState_SANDBOX_READY, netnsInfo))
	fr.set(stopped.SandboxID, sandboxStatus(stopped, runtimeapi.PodSandboxState_SANDBOX_NOTREADY, netnsInfo))

	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := d.Attached(); !slices.Equal(got, []string{"sb-good"}) {
		t.Fatalf("attached %v, want [sb-good]", got)
	}
	// Idempotent.
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := d.Attached(); !slices.Equal(got, []string{"sb-good"}) {
		t.Fatalf("second pass: attached %v, want [sb-good]", got)
	}
	// The sandbox stops while nobody called StopPodSandbox through smr-cri.
	fr.set(good.SandboxID, sandboxStatus(good, runtimeapi.PodSandboxState_SANDBOX_NOTREADY, netnsInfo))
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := d.Attached(); len(got) != 0 {
		t.Fatalf("stopped sandbox still attached: %v", got)
	}
	if d.ic.cleanups != 1 {
		t.Fatalf("detach of a stopped sandbox ran %d cleanups, want 1", d.ic.cleanups)
	}
	// A runtime that is down is an error (Run retries).
	srv.Stop()
	if err := d.Reconcile(ctx); err == nil {
		t.Fatal("reconcile with the runtime down succeeded")
	}
}

// A second sandbox with the same member ID is refused while the first still
// runs; once the first is no longer READY (replaced behind smr-cri's back)
// its member is stopped and the new sandbox takes over the member's log.
func TestSameMemberTwoSandboxes(t *testing.T) {
	ctx := context.Background()
	fr, _, endpoint := serveFakeRuntime(t)
	app := newCounterApp(t)
	d := newLoopbackDaemonWithRuntime(t, t.TempDir(), app, endpoint)
	defer d.Close(ctx)

	raftPort := freeport.PortT(t)
	first := onePod("sb1", raftPort)
	fr.set(first.SandboxID, sandboxStatus(first, runtimeapi.PodSandboxState_SANDBOX_READY, netnsInfo))
	if err := d.AttachPod(ctx, first); err != nil {
		t.Fatal(err)
	}
	incr(t, ctx, <-d.clientAddr, 3)
	second := onePod("sb2", raftPort)
	if err := d.AttachPod(ctx, second); err == nil || !strings.Contains(err.Error(), "two pods with one member ID") {
		t.Fatalf("second sandbox of member 1 while the first runs: %v", err)
	}
	fr.set(first.SandboxID, sandboxStatus(first, runtimeapi.PodSandboxState_SANDBOX_NOTREADY, netnsInfo))
	if err := d.AttachPod(ctx, second); err != nil {
		t.Fatalf("attach after the first sandbox stopped: %v", err)
	}
	incr(t, ctx, <-d.clientAddr, 1)
	// Same app here (the test's stand-in), so the new sandbox's replay of
	// the 3 INCRs shows up: a new sandbox means a fresh app in real life.
	if n, _ := app.counts(); n != 3+3+1 {
		t.Fatalf("app executed %d INCRs, want 7 (3, replay of 3, 1)", n)
	}
	if err := d.DetachPod(ctx, first.SandboxID); err != nil {
		t.Fatalf("late detach of the replaced sandbox: %v", err)
	}
	if got := d.Attached(); !slices.Equal(got, []string{"sb2"}) {
		t.Fatalf("attached %v, want [sb2]", got)
	}
}

// A container created again in an attached sandbox (kubelet restarting the
// app: attempt 1) rebuilds the member: the restarted, empty app gets the
// whole log again and the replica serves the replicated state, not its own
// empty one.
func TestContainerRestartRebuildsTheReplica(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fr, _, endpoint := serveFakeRuntime(t)
	app := newCounterApp(t)
	d := newLoopbackDaemonWithRuntime(t, t.TempDir(), app, endpoint)
	defer d.Close(ctx)
	pod := onePod("sb1", freeport.PortT(t))
	fr.set(pod.SandboxID, sandboxStatus(pod, runtimeapi.PodSandboxState_SANDBOX_READY, netnsInfo))
	if err := d.AttachPod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	addr := <-d.clientAddr // kept across the rebuild
	incr(t, ctx, addr, 3)
	d.ContainerCreating(ctx, "sb1", "app", 0) // first creation: nothing to do
	d.ContainerCreating(ctx, "other", "app", 1)
	app.restartEmpty()
	d.ContainerCreating(ctx, "sb1", "app", 1)
	incr(t, ctx, addr, 1) // the rebuilt member, same listener
	app.mu.Lock()
	k, flushes := app.vals["k"], app.flushes
	app.mu.Unlock()
	if k != 4 || flushes != 1 {
		t.Fatalf("after the rebuild k=%d (want 4: 3 replayed + 1) and %d FLUSHALL (want 1)", k, flushes)
	}
	if got := d.Attached(); !slices.Equal(got, []string{"sb1"}) {
		t.Fatalf("attached %v", got)
	}
}

// An app request that times out on this replica only (a stalled app)
// repairs the replica: emptied and replayed, it ends equal. A failure that
// comes back on every replay stops after a bounded number of repairs with
// the replica broken, instead of looping.
func TestSessionBrokenOnOneReplicaRepairs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		drops int
		want  string
	}{
		{"once", 1, replication.StateServing},
		{"on every replay", 1000, replication.StateBroken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			fr, _, endpoint := serveFakeRuntime(t)
			app := newCounterApp(t)
			d := newLoopbackDaemonWithConfig(t, t.TempDir(), app, func(c *Config) {
				c.RuntimeEndpoint = endpoint
				c.Executor.AppTimeout = 300 * time.Millisecond
			})
			defer d.Close(ctx)
			pod := onePod("sb1", freeport.PortT(t))
			fr.set(pod.SandboxID, sandboxStatus(pod, runtimeapi.PodSandboxState_SANDBOX_READY, netnsInfo))
			if err := d.AttachPod(ctx, pod); err != nil {
				t.Fatal(err)
			}
			addr := <-d.clientAddr
			incr(t, ctx, addr, 2)
			app.mu.Lock()
			app.drops = tc.drops
			app.mu.Unlock()
			c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
			_ = c.Do(ctx, "LPUSH", "l", "x").Err() // the app stalls: this replica's answer is an error
			c.Close()
			for {
				st := d.ReplicaState("sb1")
				if st == tc.want && (tc.want != replication.StateServing || app.flushCount() > 0) {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("state %s, want %s", st, tc.want)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if tc.want == replication.StateServing {
				incr(t, ctx, addr, 1)
				app.mu.Lock()
				k := app.vals["k"]
				app.mu.Unlock()
				if k != 3 {
					t.Fatalf("k=%d after the repair, want 3", k)
				}
			}
		})
	}
}
