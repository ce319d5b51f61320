package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/test/lab/kubecoretest"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// TestIntegrationContainerExitAndReadiness: three Redis pods of one group
// on a real containerd behind a real `smr-cri serve`, whose API client
// talks to an in-process core/v1 API (kubecoretest: the pods with the
// readiness gate, their status and events). The condition
// smr.io/replica-serving is set True on every pod. Then redis-server in
// redis-1 is SIGKILLed and nothing re-creates its container yet (kubelet's
// part, done by the test): serve's ContainerStatus polling alone fences the
// replica (cause container-exit), its condition goes False (Rebuilding) and
// a new client through its pod IP is refused with the reason. The test then
// re-creates the container as kubelet would (attempt 1, through smr-cri):
// the replica is rebuilt once (one RepairStarted: the CreateContainer of the
// same restart does not repair again), its empty app gets the log replayed,
// and the condition is True again.
func TestIntegrationContainerExitAndReadiness(t *testing.T) {
	nodelab.RequireIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var pods []runtime.Object
	for i := range 3 {
		name := fmt.Sprintf("redis-%d", i)
		pods = append(pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "smrtest", UID: types.UID("uid-" + name)},
			Spec:       corev1.PodSpec{ReadinessGates: []corev1.PodReadinessGate{{ConditionType: replication.ConditionReplicaServing}}},
		})
	}
	api := kubecoretest.New(t, pods...)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	kc := strings.Replace(testKubeconfig, "https://127.0.0.1:1", api.URL, 1)
	if err := os.WriteFile(kubeconfig, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startReplicatedGroup(t, ctx, groupSpec{app: "redis", image: nodelab.RedisImage, ports: "6379/resp",
		serveArgs: []string{"--kubeconfig", kubeconfig, "--container-poll-interval", "500ms"}})

	cond := func(pod string) *corev1.PodCondition { return condition(api.Pod(t, "smrtest", pod)) }
	waitCond := func(pod string, status corev1.ConditionStatus, reason string) *corev1.PodCondition {
		t.Helper()
		var c *corev1.PodCondition
		waitFor(t, ctx, fmt.Sprintf("%s condition %s=%s (%s)", pod, replication.ConditionReplicaServing, status, reason), func() (bool, string) {
			c = cond(pod)
			return c != nil && c.Status == status && c.Reason == reason, fmt.Sprintf("%+v", c)
		})
		return c
	}
	for _, p := range g.pods {
		waitCond(p.name, corev1.ConditionTrue, replication.ReadyServing)
	}

	victim := g.pods[1]
	via := redis.NewClient(&redis.Options{Addr: net.JoinHostPort(victim.ip, "6379"), Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer via.Close()
	netns := victim.netns
	direct := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", Protocol: 2, DisableIdentity: true, MaxRetries: -1,
		Dialer: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return netintercept.DialInNetns(ctx, netns, "tcp4", addr)
		}})
	defer direct.Close()
	for i := range 20 {
		key := fmt.Sprintf("k%d", i)
		retry(t, ctx, "SET "+key+" through "+victim.name, func() error { return via.Set(ctx, key, i, 0).Err() })
	}
	via.Close() // its session must not hold the repair's replay

	// SIGKILL of the app's process; the container is not re-created yet.
	ctr := appContainer(t, ctx, g, victim.sandbox)
	pid := containerPID(t, ctx, g, ctr.GetId())
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill redis-server (pid %d) in %s: %v", pid, victim.name, err)
	}
	c := waitCond(victim.name, corev1.ConditionFalse, replication.ReadyRebuilding)
	if !strings.Contains(c.Message, "cause container-exit") || !strings.Contains(c.Message, "exit code 137") {
		t.Errorf("condition message %q does not name the exit", c.Message)
	}
	st, err := g.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr.GetId()})
	if err != nil || st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Fatalf("the killed container: %v (%v)", st.GetStatus().GetState(), err)
	}
	if reply := rawRoundTrip(t, net.JoinHostPort(victim.ip, "6379"), "*1\r\n$4\r\nPING\r\n"); !strings.HasPrefix(reply,
		"-ERR smr-cri: replication unavailable: app on this replica is not ready: replica rebuilding: repair (cause container-exit") {
		t.Errorf("a new client of %s got %q, want the refusal naming the cause", victim.name, reply)
	}
	for _, p := range []int{0, 2} {
		if c := cond(g.pods[p].name); c == nil || c.Status != corev1.ConditionTrue {
			t.Errorf("%s condition %+v: only the faulted replica goes not ready", g.pods[p].name, c)
		}
	}

	// kubelet's part: the container is created again (attempt 1) and started.
	recreate(t, ctx, g, victim, ctr)
	waitCond(victim.name, corev1.ConditionTrue, replication.ReadyServing)
	waitFor(t, ctx, "the app's keys replayed", func() (bool, string) {
		n, err := direct.DBSize(ctx).Result()
		return err == nil && n == 20, fmt.Sprintf("%d keys (%v)", n, err)
	})
	if v, err := direct.Get(ctx, "k7").Int(); err != nil || v != 7 {
		t.Errorf("k7 in the rebuilt app = %d (%v), want 7", v, err)
	}
	var started []string
	for _, ev := range api.Events(t, "smrtest") {
		if ev.InvolvedObject.Name == victim.name && ev.Reason == podevents.ReasonRepairStarted {
			started = append(started, ev.Message)
		}
	}
	if len(started) != 1 || !strings.Contains(started[0], "cause container-exit") {
		t.Errorf("RepairStarted events on %s: %q, want one, cause container-exit (the re-creation is the same restart)", victim.name, started)
	}
	if !strings.Contains(g.s.log(), "container of a replicated pod exited: fencing its replica") {
		t.Error("serve's log does not say the poll found the exit")
	}
}

// appContainer is the running app container of a lab pod.
func appContainer(t *testing.T, ctx context.Context, g *groupLab, sandbox string) *runtimeapi.Container {
	t.Helper()
	resp, err := g.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: sandbox}})
	if err != nil || len(resp.GetContainers()) != 1 {
		t.Fatalf("containers of sandbox %s: %v (%v)", sandbox, resp.GetContainers(), err)
	}
	return resp.GetContainers()[0]
}

// containerPID reads the container's init process from the runtime's
// verbose status (containerd's CRI "info").
func containerPID(t *testing.T, ctx context.Context, g *groupLab, id string) int {
	t.Helper()
	st, err := g.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info.Pid <= 0 {
		t.Fatalf("pid of container %s: %q (%v)", id, st.GetInfo()["info"], err)
	}
	return info.Pid
}

// recreate does what kubelet does after an app container exited: create the
// next attempt in the same sandbox, through smr-cri, and start it.
func recreate(t *testing.T, ctx context.Context, g *groupLab, p labPod, old *runtimeapi.Container) {
	t.Helper()
	sb, err := g.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.sandbox})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &runtimeapi.PodSandboxConfig{Metadata: sb.GetStatus().GetMetadata(), Labels: sb.GetStatus().GetLabels(),
		Annotations: sb.GetStatus().GetAnnotations(), LogDirectory: filepath.Join(g.dir, "logs", p.name),
		Linux: &runtimeapi.LinuxPodSandboxConfig{}}
	name := old.GetMetadata().GetName()
	ctr, err := g.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.sandbox, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name, Attempt: old.GetMetadata().GetAttempt() + 1},
			Image: &runtimeapi.ImageSpec{Image: nodelab.RedisImage}, LogPath: fmt.Sprintf("%s.%d.log", name, old.GetMetadata().GetAttempt()+1)}})
	if err != nil {
		t.Fatalf("CreateContainer %s attempt %d: %v", name, old.GetMetadata().GetAttempt()+1, err)
	}
	if _, err := g.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.GetContainerId()}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
}
