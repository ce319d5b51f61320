package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/cri"
)

// HostRunner runs commands on the node. With Root "/" it runs them
// directly; otherwise (inside the DaemonSet's init container, which has the
// node's / at Root and shares the node's PID namespace) it chroots into Root
// and runs the node's own nsenter into PID 1's namespaces, so systemctl talks
// to the node's systemd. The image thus needs nothing but smr-cri itself.
type HostRunner struct {
	Root string
	// TargetPID is the process whose namespaces commands enter (default 1,
	// the node's init; tests use a process of their own).
	TargetPID int
}

// Run implements CommandRunner.
func (h HostRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var cmd *exec.Cmd
	if filepath.Clean(h.Root) == "/" {
		cmd = exec.CommandContext(ctx, name, args...)
	} else {
		target := h.TargetPID
		if target == 0 {
			target = 1
		}
		nsArgs := append([]string{"--target", strconv.Itoa(target), "--mount", "--uts", "--ipc", "--net", "--pid", "--", name}, args...)
		nsenter, err := findNsenter(h.Root)
		if err != nil {
			return nil, err
		}
		cmd = exec.CommandContext(ctx, nsenter, nsArgs...)
		// exec.Cmd looks the path up after the chroot, in the node's tree.
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: h.Root}
		cmd.Dir = "/"
		cmd.Env = NodeEnv
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("run %s %s: %w", name, strings.Join(args, " "), err)
	}
	return out, nil
}

// NodeEnv is the environment of commands run on the node through nsenter.
// Not the init container's own: the smr-cri image's PATH is /usr/local/bin
// only, so nsenter (which looks its command up in PATH) found no systemctl on
// a real kind node.
var NodeEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// findNsenter returns where the node keeps util-linux's nsenter (a path
// inside root): /usr/bin on Debian (kind) and buildroot (minikube).
func findNsenter(root string) (string, error) {
	dirs := []string{"/usr/bin", "/bin", "/usr/sbin", "/sbin"}
	for _, d := range dirs {
		p := d + "/nsenter"
		if fi, err := os.Stat(hostPath(root, p)); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("nsenter (util-linux) not found on the node in %s", strings.Join(dirs, ", "))
}

// GRPCChecker is the real CRIChecker: a CRI RuntimeService client on a unix socket.
type GRPCChecker struct{}

// dialCRI connects to a CRI unix socket the way smr-cri itself does (cri.DialRuntime).
func dialCRI(socket string) (*grpc.ClientConn, runtimeapi.RuntimeServiceClient, error) {
	conn, err := cri.DialRuntime("unix://" + socket)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	return conn, runtimeapi.NewRuntimeServiceClient(conn), nil
}

// Version implements CRIChecker.
func (GRPCChecker) Version(ctx context.Context, socket string) (string, error) {
	conn, c, err := dialCRI(socket)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := c.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return "", fmt.Errorf("CRI Version on %s: %w", socket, err)
	}
	return v.RuntimeName + " " + v.RuntimeVersion, nil
}

// KubeletReady is the real NodeChecker used by the DaemonSet (which runs in
// the node's network namespace): kubelet's healthz answers "ok", and the CRI
// Status through smr-cri reports RuntimeReady and NetworkReady, the two
// runtime conditions kubelet needs to mark the node Ready. It needs no API
// server access, so the DaemonSet's RBAC stays minimal.
type KubeletReady struct {
	HealthzURL string // e.g. http://127.0.0.1:10248/healthz
	Socket     string // smr-cri's socket as seen by this process
	Client     *http.Client
}

// Ready implements NodeChecker.
func (k KubeletReady) Ready(ctx context.Context) error {
	client := k.Client
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.HealthzURL, nil)
	if err != nil {
		return fmt.Errorf("kubelet healthz: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("kubelet healthz: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("kubelet healthz %s: %s: %s", k.HealthzURL, resp.Status, strings.TrimSpace(string(body)))
	}
	conn, c, err := dialCRI(k.Socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return fmt.Errorf("CRI Status through %s: %w", k.Socket, err)
	}
	var errs []error
	for _, want := range []string{runtimeapi.RuntimeReady, runtimeapi.NetworkReady} {
		ok := false
		for _, c := range st.GetStatus().GetConditions() {
			if c.Type == want && c.Status {
				ok = true
			}
		}
		if !ok {
			errs = append(errs, fmt.Errorf("runtime condition %s is not true", want))
		}
	}
	return errors.Join(errs...)
}
