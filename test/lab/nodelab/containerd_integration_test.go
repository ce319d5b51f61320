package nodelab

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/test/lab/procfs"
)

// TestContainerdLab runs a real pod (the Redis image) in a private containerd, talks to it over
// the CNI bridge, and checks that stopping the lab leaves no process, mount, bridge or netns.
func TestContainerdLab(t *testing.T) {
	RequireIntegration(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := StartContainerd(ctx, ContainerdOptions{Dir: dir, Log: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = c.Stop(context.Background())
		}
	})

	conn, err := dialCRI(c.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "redis", Namespace: "nodelab", Uid: "uid-redis"},
		LogDirectory: filepath.Join(dir, "pod-logs"),
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
	pod, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	ctr, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "redis"},
			Image:    &runtimeapi.ImageSpec{Image: RedisImage},
			LogPath:  "redis.log",
		},
		SandboxConfig: podCfg,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod.PodSandboxId, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	ip := st.GetStatus().GetNetwork().GetIp()
	if !strings.HasPrefix(ip, strings.TrimSuffix(c.Subnet(), "0/24")) {
		t.Fatalf("pod IP %q not in the lab subnet %s", ip, c.Subnet())
	}
	if !strings.Contains(st.GetInfo()["info"], filepath.Join(dir, "state")+"/") {
		t.Fatalf("pod netns is not under the lab's state dir: %s", st.GetInfo()["info"])
	}
	// The unmodified Debian redis-server answers from the pod (its libraries came along).
	var reply string
	for i := 0; i < 100; i++ {
		reply, err = redisPing(ip + ":6379")
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if reply != "+PONG" {
		t.Fatalf("redis PING via %s: reply %q, err %v", ip, reply, err)
	}

	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	stopped = true
	if m, _ := MountsUnder(dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	if pids := shimPIDs(c.Socket()); len(pids) > 0 {
		t.Errorf("shims left: %v", pids)
	}
	if procfs.Alive(c.PID()) {
		t.Errorf("containerd pid %d still running", c.PID())
	}
	if _, err := netlink.LinkByName(c.Bridge()); err == nil {
		t.Errorf("bridge %s left", c.Bridge())
	}
	if b, err := os.ReadFile(filepath.Join(SlotDir, strconv.Itoa(c.state.Slot), "dir")); err == nil && string(b) == dir {
		t.Errorf("slot %d still claimed", c.state.Slot)
	}
	// Stop is idempotent.
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func redisPing(addr string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}
