// Package kubelet_test runs a real kubelet v1.37.2 (standalone, static pods) against smr-cri in
// front of a private containerd: the end-to-end check that the proxy is transparent to kubelet
// and that its RunPodSandbox hook fires for labelled pods only.
package kubelet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// staticPod is a busybox pod that prints a marker line and then sleeps.
func staticPod(name, marker string, labelled bool) string {
	labels := "    app: " + name + "\n"
	if labelled {
		labels += "    smr.io/replicate: \"true\"\n"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
  labels:
%sspec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: %s
    imagePullPolicy: Never
    command: ["sh", "-c", "echo %s; exec sleep 3600"]
`, name, labels, nodelab.BusyboxImage, marker)
}

type runningPod struct {
	sandboxID   string
	netns       string
	containerID string
	logPath     string
}

func TestKubeletThroughSmrCRI(t *testing.T) {
	nodelab.RequireIntegration(t)
	if _, err := nodelab.CachedTool("kubelet"); err != nil {
		t.Fatal(err)
	}
	crictl, err := nodelab.CachedTool("crictl")
	if err != nil {
		t.Fatal(err)
	}
	root, err := nodelab.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	// Cleanups run last-registered first: kubelet, then smr-cri, then containerd (which removes
	// the pods kubelet left), then the temporary directory.
	ctd := nodelab.StartContainerdT(t)
	dir := t.TempDir()

	smrBin := filepath.Join(dir, "smr-cri")
	build := exec.CommandContext(ctx, "go", "build", "-o", smrBin, "./cmd/smr-cri")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/smr-cri: %v\n%s", err, out)
	}
	smrSock := filepath.Join(dir, "smr-cri.sock")
	smrLog := filepath.Join(dir, "smr-cri.log")
	logFile, err := os.Create(smrLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// --replication=false: this test is about the CRI proxy and its hook under a real kubelet, so
	// the hook's LoggingReplicator logs each attach with the netns path. Replication itself runs
	// under real kubelets in e2e/ and through this proxy in internal/daemon's integration tests.
	serve := exec.Command(smrBin, "serve", "--listen", smrSock, "--runtime-endpoint", ctd.Endpoint(),
		"--replication=false", "--data-dir", filepath.Join(dir, "data"))
	serve.Stdout, serve.Stderr = logFile, logFile
	serveExited, err := nodelab.StartChild(serve)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nodelab.Terminate(serve.Process.Pid, 15*time.Second); err != nil {
			t.Errorf("stop smr-cri: %v", err)
		}
		<-serveExited
		if t.Failed() {
			t.Logf("smr-cri log:\n%s", readFile(smrLog))
		}
	})
	waitFor(t, ctx, "smr-cri socket", func() error {
		if _, err := os.Stat(smrSock); err != nil {
			return err
		}
		return nil
	})

	kl, err := nodelab.StartKubelet(ctx, nodelab.KubeletOptions{
		Dir:             filepath.Join(dir, "kubelet"),
		RuntimeEndpoint: "unix://" + smrSock,
		NodeName:        "smr-kubelet-test",
		Log:             testLog{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubelet log (tail):\n%s", nodelab.TailFile(kl.LogFile(), 60))
		}
		if err := kl.Stop(); err != nil {
			t.Errorf("stop kubelet: %v", err)
		}
	})
	for name, manifest := range map[string]string{
		"replicated": staticPod("replicated", "hello-from-replicated", true),
		"plain":      staticPod("plain", "hello-from-plain", false),
	} {
		if err := os.WriteFile(filepath.Join(kl.ManifestDir(), name+".yaml"), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Everything below talks to smr-cri, not to containerd.
	conn, err := grpc.NewClient("unix://"+smrSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	pods := map[string]*runningPod{}
	waitFor(t, ctx, "both static pods running through smr-cri", func() error {
		select {
		case <-kl.Exited():
			return fmt.Errorf("kubelet exited: %w", errStop)
		default:
		}
		for _, name := range []string{"replicated", "plain"} {
			p, err := findRunningPod(ctx, rt, name)
			if err != nil {
				return err
			}
			pods[name] = p
		}
		return nil
	})
	rep, plain := pods["replicated"], pods["plain"]
	t.Logf("replicated pod sandbox %s netns %s; plain pod sandbox %s", rep.sandboxID, rep.netns, plain.sandboxID)

	// The hook fired for the labelled pod, naming its sandbox and network namespace ...
	waitFor(t, ctx, "attach log line for the labelled pod", func() error {
		for _, line := range strings.Split(readFile(smrLog), "\n") {
			if strings.Contains(line, rep.sandboxID) && strings.Contains(line, rep.netns) && isAttachLine(line) {
				return nil
			}
		}
		return fmt.Errorf("no line in %s names sandbox %s with netns %s", smrLog, rep.sandboxID, rep.netns)
	})
	// ... and not for the unlabelled one.
	for _, line := range strings.Split(readFile(smrLog), "\n") {
		if strings.Contains(line, plain.sandboxID) && (isAttachLine(line) || strings.Contains(line, plain.netns)) {
			t.Errorf("hook fired for the unlabelled pod: %s", line)
		}
	}

	// The container log file (what `kubectl logs` reads) has the output, in kubelet's pod log dir.
	for name, p := range map[string]*runningPod{"replicated": rep, "plain": plain} {
		if !strings.HasPrefix(p.logPath, kl.PodLogsDir()+"/") {
			t.Errorf("%s: log path %s is not under kubelet's pod log dir %s", name, p.logPath, kl.PodLogsDir())
		}
		marker := "hello-from-" + name
		waitFor(t, ctx, name+" container log", func() error {
			if !strings.Contains(readFile(p.logPath), marker) {
				return fmt.Errorf("%s does not contain %q yet", p.logPath, marker)
			}
			return nil
		})
	}

	// crictl exec (a streaming Exec: the URL comes back through the proxy unchanged).
	out, stderr, err := runCrictl(ctx, crictl, smrSock, "exec", rep.containerID, "sh", "-c", "echo exec-through-$0", "smr-cri")
	if err != nil || strings.TrimSpace(out) != "exec-through-smr-cri" {
		t.Fatalf("crictl exec through smr-cri: err %v, stdout %q, stderr %q", err, out, stderr)
	}
	// crictl logs reads the same file through the proxy's ContainerStatus.
	out, stderr, err = runCrictl(ctx, crictl, smrSock, "logs", rep.containerID)
	if err != nil || !strings.Contains(out, "hello-from-replicated") {
		t.Fatalf("crictl logs through smr-cri: err %v, stdout %q, stderr %q", err, out, stderr)
	}

	// Deleting the labelled pod's manifest makes kubelet stop its sandbox: the proxy hands the
	// pod back (a detach line naming the sandbox).
	if err := os.Remove(filepath.Join(kl.ManifestDir(), "replicated.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "detach log line for the labelled pod", func() error {
		for _, line := range strings.Split(readFile(smrLog), "\n") {
			if strings.Contains(line, rep.sandboxID) && strings.Contains(strings.ToLower(line), "detach") {
				return nil
			}
		}
		return fmt.Errorf("no detach line for sandbox %s in %s", rep.sandboxID, smrLog)
	})
}

// runCrictl runs crictl against smr-cri's socket (crictl warns on stderr that it has no config
// file, so stdout and stderr are kept apart).
func runCrictl(ctx context.Context, crictl, sock string, args ...string) (stdout, stderr string, err error) {
	var o, e strings.Builder
	cmd := exec.CommandContext(ctx, crictl, append([]string{"--runtime-endpoint", "unix://" + sock, "--timeout", "30s"}, args...)...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// isAttachLine: a log line about attaching a pod to replication (not detaching it).
func isAttachLine(line string) bool {
	l := strings.ToLower(line)
	return strings.Contains(l, "attach") && !strings.Contains(l, "detach")
}

var errStop = fmt.Errorf("giving up")

// findRunningPod finds the ready sandbox of static pod name (kubelet appends the node name)
// with a running container, and its network namespace from the verbose status.
func findRunningPod(ctx context.Context, rt runtimeapi.RuntimeServiceClient, name string) (*runningPod, error) {
	sbs, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return nil, fmt.Errorf("ListPodSandbox: %w", err)
	}
	for _, sb := range sbs.GetItems() {
		if !strings.HasPrefix(sb.GetMetadata().GetName(), name+"-") {
			continue
		}
		cs, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
			PodSandboxId: sb.Id,
			State:        &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		}})
		if err != nil {
			return nil, fmt.Errorf("ListContainers: %w", err)
		}
		if len(cs.GetContainers()) == 0 {
			return nil, fmt.Errorf("pod %s: no running container yet", name)
		}
		st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.Id, Verbose: true})
		if err != nil {
			return nil, fmt.Errorf("PodSandboxStatus: %w", err)
		}
		netns, err := netnsFromInfo(st.GetInfo()["info"])
		if err != nil {
			return nil, fmt.Errorf("pod %s: %w", name, err)
		}
		ctr := cs.GetContainers()[0]
		cst, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr.Id})
		if err != nil {
			return nil, fmt.Errorf("ContainerStatus: %w", err)
		}
		return &runningPod{sandboxID: sb.Id, netns: netns, containerID: ctr.Id, logPath: cst.GetStatus().GetLogPath()}, nil
	}
	return nil, fmt.Errorf("pod %s: no ready sandbox yet", name)
}

// netnsFromInfo reads the network namespace path from containerd's verbose sandbox info.
func netnsFromInfo(info string) (string, error) {
	var v struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string }
			}
		}
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil {
		return "", fmt.Errorf("sandbox info: %w", err)
	}
	for _, ns := range v.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			return ns.Path, nil
		}
	}
	return "", fmt.Errorf("sandbox info has no network namespace path")
}

// waitFor polls cond until it succeeds, the context ends or cond wraps errStop. This is a
// condition wait, not a timed assertion: the deadline only bounds a hung test.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	var err error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if err = cond(); err == nil {
			return
		}
		if strings.Contains(err.Error(), errStop.Error()) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("waiting for %s: %v", what, err)
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
