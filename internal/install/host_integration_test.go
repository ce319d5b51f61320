package install

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// TestHostRunnerNsenter runs a command the way the DaemonSet's init
// container does: chrooted into a host root that is a bind mount of this
// machine's /, through the host's own nsenter into PID 1's namespaces.
func TestHostRunnerNsenter(t *testing.T) {
	nodelab.RequireIntegration(t)
	if _, err := os.Stat("/usr/bin/nsenter"); err != nil {
		t.Fatalf("nsenter (util-linux) is required: %v", err)
	}
	root := filepath.Join(t.TempDir(), "host")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// Not recursive, so /proc is bound separately (nsenter reads /proc/1/ns).
	if err := syscall.Mount("/", root, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind / at %s: %v", root, err)
	}
	t.Cleanup(func() { syscall.Unmount(root, syscall.MNT_DETACH) })
	if err := syscall.Mount("/proc", filepath.Join(root, "proc"), "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind /proc: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(filepath.Join(root, "proc"), syscall.MNT_DETACH) })

	// The "node's init": a process of ours in mount/UTS/IPC namespaces of
	// its own (the machine's real PID 1 is not ours to enter).
	initProc := exec.Command("unshare", "--mount", "--uts", "--ipc", "sleep", "600")
	if err := initProc.Start(); err != nil {
		t.Fatalf("start unshare: %v", err)
	}
	t.Cleanup(func() { initProc.Process.Kill(); initProc.Wait() })
	ns := filepath.Join("/proc", strconv.Itoa(initProc.Process.Pid), "ns", "mnt")
	var want string
	for { // unshare execs sleep in the same process once the namespaces exist
		own, _ := os.Readlink("/proc/self/ns/mnt")
		if got, err := os.Readlink(ns); err == nil && got != own {
			want = got
			break
		}
		select {
		case <-t.Context().Done():
			t.Fatal("unshare never entered a new mount namespace")
		case <-time.After(time.Millisecond):
		}
	}

	h := HostRunner{Root: root, TargetPID: initProc.Process.Pid}
	out, err := h.Run(context.Background(), "sh", "-c", "echo hello from $(readlink /proc/self/ns/mnt)")
	if err != nil {
		t.Fatalf("run through chroot+nsenter: %v: %s", err, out)
	}
	if string(out) != "hello from "+want+"\n" {
		t.Errorf("got %q, want %q (the command must run in the target's mount namespace)", out, "hello from "+want)
	}

	// The init container's PATH (the smr-cri image: /usr/local/bin only) must not be what nsenter
	// searches: on a real kind node it found no systemctl.
	t.Setenv("PATH", "/usr/local/bin")
	out, err = h.Run(context.Background(), "sh", "-c", "echo $PATH")
	if err != nil {
		t.Fatalf("run sh with the container's PATH: %v: %s", err, out)
	}
	if got, want := "PATH="+string(out), NodeEnv[0]+"\n"; got != want {
		t.Errorf("command ran with %q, want %q", got, want)
	}
}
