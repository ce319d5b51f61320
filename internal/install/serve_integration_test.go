package install

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// unitRunner plays systemd for smr-cri.service on a host root: "restart"
// runs the unit's ExecStart line verbatim, chrooted into the root, with its
// output appended to the unit's StandardOutput file; "disable --now" stops
// it with SIGTERM. Other commands (daemon-reload, enable, kubelet) are only
// recorded. The thing under test is what install writes and starts (the
// real binary, the real unit command line, a real runtime behind it), not
// systemd, which this machine does not have.
type unitRunner struct {
	root string
	mu   sync.Mutex
	cmds []string
	proc *exec.Cmd
	done chan struct{}
}

func (u *unitRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	c := strings.Join(append([]string{name}, args...), " ")
	u.cmds = append(u.cmds, c)
	switch c {
	case "systemctl restart smr-cri.service":
		u.stopLocked()
		return nil, u.startLocked()
	case "systemctl start smr-cri.service":
		if u.proc == nil {
			return nil, u.startLocked()
		}
	case "systemctl disable --now smr-cri.service":
		u.stopLocked()
	}
	return nil, nil
}

func (u *unitRunner) startLocked() error {
	unit, err := os.ReadFile(hostPath(u.root, UnitPath))
	if err != nil {
		return err
	}
	var argv []string
	var logPath string
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "ExecStart="); ok {
			argv = strings.Fields(v)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "StandardOutput=append:"); ok {
			logPath = v
		}
	}
	if len(argv) == 0 || logPath == "" {
		return fmt.Errorf("unit has no ExecStart or StandardOutput=append: line:\n%s", unit)
	}
	log, err := os.OpenFile(hostPath(u.root, logPath), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: u.root}
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %q in %s: %w", argv, u.root, err)
	}
	u.proc, u.done = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(u.done)
	return nil
}

func (u *unitRunner) stopLocked() {
	if u.proc == nil {
		return
	}
	u.proc.Process.Signal(syscall.SIGTERM)
	<-u.done // serve shuts down gracefully and removes its socket
	u.proc = nil
}

func (u *unitRunner) stop() { u.mu.Lock(); defer u.mu.Unlock(); u.stopLocked() }

// buildStatic builds cmd/smr-cri without cgo, so it runs inside a bare chroot.
func buildStatic(t *testing.T) string {
	t.Helper()
	repo, err := nodelab.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "smr-cri")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/smr-cri")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// bindFile bind-mounts src onto a new file at dst (under the host root).
func bindFile(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(src, dst, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s on %s: %v", src, dst, err)
	}
	t.Cleanup(func() {
		syscall.Unmount(dst, syscall.MNT_DETACH)
		os.Remove(dst)
	})
}

// TestInstallRealServe installs the real binary on a kind-shaped host root
// whose containerd socket is a real containerd: the unit install writes must
// start a smr-cri that answers CRI Version and Status through that runtime;
// uninstall must stop it and restore the tree. A run whose runtime is gone
// must fail at the CRI Version step and roll back.
func TestInstallRealServe(t *testing.T) {
	nodelab.RequireIntegration(t)
	ctd := nodelab.StartContainerdT(t)
	bin := buildStatic(t)
	healthz := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) }))
	defer healthz.Close()

	for _, c := range []struct {
		name       string
		runtimeUp  bool
		wantFailAt string
	}{
		{"runtime up", true, ""},
		{"runtime gone", false, "wait until smr-cri answers CRI Version on " + SocketPath},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := newHost(t, "kind")
			// The runtime kubelet uses before the install, at the path its config names.
			criSock := hostPath(root, strings.TrimPrefix(KubeletDefaultEndpoint, "unix://"))
			if c.runtimeUp {
				bindFile(t, ctd.Socket(), criSock)
			}
			orig := render(t, root)
			u := &unitRunner{root: root}
			defer u.stop()
			var log bytes.Buffer
			o := Options{HostRoot: root, Binary: bin, Exec: u, CRI: GRPCChecker{},
				Node: KubeletReady{HealthzURL: healthz.URL, Socket: hostPath(root, SocketPath)},
				Log:  &log, Timeout: 10 * time.Second, PollInterval: 100 * time.Millisecond}

			err := Install(context.Background(), o)
			if c.wantFailAt != "" {
				var se *StepError
				if !errors.As(err, &se) || se.Step != c.wantFailAt || se.RollbackErr != nil {
					t.Fatalf("install: got %v, want a clean rollback of %q\n%s", err, c.wantFailAt, log.String())
				}
				if u.proc != nil {
					t.Error("smr-cri still runs after the rollback")
				}
				if got := render(t, root); got != orig {
					t.Errorf("rollback left the tree changed:\n%s", diff(orig, got))
				}
				return
			}
			if err != nil {
				t.Fatalf("install: %v\n%s", err, log.String())
			}
			v, err := GRPCChecker{}.Version(context.Background(), hostPath(root, SocketPath))
			if err != nil || !strings.HasPrefix(v, "containerd ") {
				t.Errorf("CRI Version through the installed smr-cri: %q, %v (want containerd's)", v, err)
			}
			logged, _ := os.ReadFile(hostPath(root, LogFile))
			if !strings.Contains(string(logged), "smr-cri serving") || !strings.Contains(string(logged), "unix:///run/containerd/containerd.sock") {
				t.Errorf("%s lacks serve's start line naming the runtime:\n%s", LogFile, logged)
			}
			// The unit names the kubeconfig the DaemonSet writes later: serve
			// starts without it and says it will read it at first use.
			if !strings.Contains(string(logged), "kubeconfig not there yet") || !strings.Contains(string(logged), KubeconfigPath) {
				t.Errorf("%s: serve does not say it waits for %s:\n%s", LogFile, KubeconfigPath, logged)
			}

			if err := Uninstall(context.Background(), o); err != nil {
				t.Fatalf("uninstall: %v\n%s", err, log.String())
			}
			if u.proc != nil {
				t.Error("smr-cri still runs after uninstall")
			}
			if got := render(t, root); got != orig {
				t.Errorf("uninstall did not restore the tree:\n%s", diff(orig, got))
			}
		})
	}
}
