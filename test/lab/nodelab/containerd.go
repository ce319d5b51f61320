package nodelab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/template"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/test/lab/procfs"
)

// ContainerdOptions configures StartContainerd.
type ContainerdOptions struct {
	// Dir holds everything of this instance: config, root, state, socket, log, CNI config and
	// IPAM data, runc state, network namespaces. Required; created if missing.
	Dir string
	// ImagesTar is a docker-archive to import; empty builds DefaultImages into Dir/images.tar.
	ImagesTar string
	// NoImages skips the image import altogether.
	NoImages bool
	// Detach leaves containerd running when this process exits (hack/lab containerd-up).
	// Otherwise containerd gets SIGKILL when this process dies, and a later StartContainerd
	// sweeps what it left.
	Detach bool
	// Owner is the process whose death marks this lab as stale for SweepStale; 0 means this
	// process unless Detach is set, in which case the lab is never swept automatically.
	Owner int
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// Subnet and Bridge, when Subnet is set, fix the pod subnet (CIDR) and CNI bridge name
	// instead of claiming a lab slot (multi-node setups give each node its own subnet).
	Subnet string
	Bridge string
	// NetNS is the path of a network namespace (/var/run/netns/<name>) to run containerd in,
	// entered with nsenter --net (not ip netns exec, which remounts /sys). The CNI bridge is then
	// created inside that namespace, and whoever owns the namespace deletes it with it.
	NetNS string
}

// Containerd is a running private containerd.
type Containerd struct {
	dir   string
	state labState
}

// labState is persisted as Dir/lab.json so that another process can stop the instance.
type labState struct {
	Slot   int    `json:"slot"`
	Bridge string `json:"bridge"`
	Subnet string `json:"subnet"`
	PID    int    `json:"pid"`
	Owner  int    `json:"owner"`
	NetNS  string `json:"netns,omitempty"`
}

const labStateFile = "lab.json"

// Socket is the path of containerd's gRPC (CRI) socket.
func (c *Containerd) Socket() string { return socketPath(c.dir) }

// Endpoint is the socket as a CRI endpoint URL (unix://...).
func (c *Containerd) Endpoint() string { return "unix://" + c.Socket() }

// Dir is the instance directory.
func (c *Containerd) Dir() string { return c.dir }

// Subnet is the pod subnet (CIDR) of this instance's CNI bridge.
func (c *Containerd) Subnet() string { return c.state.Subnet }

// Bridge is the name of this instance's CNI bridge link.
func (c *Containerd) Bridge() string { return c.state.Bridge }

// PID is containerd's process id.
func (c *Containerd) PID() int { return c.state.PID }

// Stop removes every pod, stops containerd and cleans up; see StopContainerd.
func (c *Containerd) Stop(ctx context.Context) error { return StopContainerd(ctx, c.dir, nil) }

func socketPath(dir string) string { return filepath.Join(dir, "containerd.sock") }

var configTemplate = template.Must(template.New("config").Parse(`# Written by smr-cri's node lab (test/lab/nodelab). See NODE-LAB.md.
version = 2
root = "{{.Dir}}/root"
state = "{{.Dir}}/state"

[grpc]
  address = "{{.Dir}}/containerd.sock"

[ttrpc]
  address = "{{.Dir}}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  # Nothing can be pulled on these machines: the lab imports this image before any pod starts.
  sandbox_image = "{{.Pause}}"
  # The VM lacks CAP_SYS_RESOURCE; without this every RunPodSandbox fails in runc.
  restrict_oom_score_adj = true
  # Pod network namespaces live under state/netns, so stopping the lab finds every one.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{.CNIBin}}"
    conf_dir = "{{.Dir}}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # runc state of this instance's containers, so cleanup can find and kill them.
        Root = "{{.Dir}}/runc"
`))

// cniTemplate: bridge + host-local (+ portmap for hostPort). containerd adds the loopback
// network itself (the loopback plugin from bin_dir). Pods get a route to 198.18.0.0/15 only:
// no default route, no masquerading, nothing leaves the machine.
var cniTemplate = template.Must(template.New("cni").Parse(`{
  "cniVersion": "0.4.0",
  "name": "{{.Bridge}}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "{{.Bridge}}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "{{.Subnet}}", "gateway": "{{.Gateway}}"}]],
        "routes": [{"dst": "198.18.0.0/15"}],
        "dataDir": "{{.Dir}}/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`))

const cniBinDir = "/usr/lib/cni"

// renderConfig writes Dir/config.toml and Dir/cni/10-smrlab.conflist.
func renderConfig(dir string, st labState) error {
	if err := os.MkdirAll(filepath.Join(dir, "cni"), 0o755); err != nil {
		return err
	}
	var cfg bytes.Buffer
	if err := configTemplate.Execute(&cfg, map[string]string{"Dir": dir, "Pause": PauseImage, "CNIBin": cniBinDir}); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), cfg.Bytes(), 0o644); err != nil {
		return err
	}
	gw, err := gatewayOf(st.Subnet)
	if err != nil {
		return err
	}
	var cni bytes.Buffer
	if err := cniTemplate.Execute(&cni, map[string]string{"Dir": dir, "Bridge": st.Bridge, "Subnet": st.Subnet, "Gateway": gw}); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cni", "10-smrlab.conflist"), cni.Bytes(), 0o644)
}

// StartContainerd writes the configuration, starts containerd in opts.Dir, waits until its CRI
// reports runtime and network ready, and imports the lab images. On error everything it started
// is stopped again.
func StartContainerd(ctx context.Context, opts ContainerdOptions) (_ *Containerd, err error) {
	logf := func(format string, args ...any) {
		if opts.Log != nil {
			fmt.Fprintf(opts.Log, "nodelab: "+format+"\n", args...)
		}
	}
	if opts.Dir == "" {
		return nil, errors.New("nodelab: ContainerdOptions.Dir is required")
	}
	if err := CheckRoot(); err != nil {
		return nil, err
	}
	bin, err := HostTool("containerd")
	if err != nil {
		return nil, err
	}
	for _, t := range []string{"ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := HostTool(t); err != nil {
			return nil, err
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, p)); err != nil {
			return nil, fmt.Errorf("nodelab: CNI plugin %s: %w: %w", p, err, ErrMissing)
		}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("nodelab: %w", err)
	}
	// A lab whose owner died (a test binary killed by its timeout) is cleaned up first.
	if err := SweepStale(ctx, opts.Log); err != nil {
		logf("sweeping stale labs: %v", err)
	}
	if st, err := readLabState(dir); err == nil {
		if procfs.Alive(st.PID) {
			return nil, fmt.Errorf("nodelab: containerd already running in %s (pid %d); stop it first", dir, st.PID)
		}
		if err := StopContainerd(ctx, dir, opts.Log); err != nil {
			return nil, fmt.Errorf("nodelab: cleaning up the previous lab in %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("nodelab: %w", err)
	}
	if len(socketPath(dir)) > 100 {
		return nil, fmt.Errorf("nodelab: directory %s is too long for a unix socket path", dir)
	}
	st, err := labAddressing(dir, opts)
	if err != nil {
		return nil, err
	}
	if st.Owner == 0 && !opts.Detach {
		st.Owner = os.Getpid()
	}
	c := &Containerd{dir: dir, state: st}
	defer func() {
		if err != nil {
			if serr := StopContainerd(context.WithoutCancel(ctx), dir, opts.Log); serr != nil {
				logf("cleanup after failed start: %v", serr)
			}
		}
	}()
	if err := writeLabState(dir, st); err != nil { // before starting: a failed start is still cleaned
		return nil, err
	}
	if err := renderConfig(dir, st); err != nil {
		return nil, fmt.Errorf("nodelab: write config: %w", err)
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("nodelab: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "config.toml"))
	if opts.NetNS != "" {
		nsenter, err := HostTool("nsenter")
		if err != nil {
			return nil, err
		}
		// nsenter without --fork execs containerd, so the pid stays containerd's.
		cmd = exec.Command(nsenter, "--net="+opts.NetNS, bin, "--config", filepath.Join(dir, "config.toml"))
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = dir
	exited := make(chan struct{})
	if err := startProcess(cmd, opts.Detach, exited); err != nil {
		return nil, fmt.Errorf("nodelab: start containerd: %w", err)
	}
	c.state.PID = cmd.Process.Pid
	if err := writeLabState(dir, c.state); err != nil {
		return nil, err
	}
	logf("containerd pid %d in %s, bridge %s, subnet %s", c.state.PID, dir, st.Bridge, st.Subnet)
	if err := waitReady(ctx, c.Socket(), exited); err != nil {
		return nil, fmt.Errorf("nodelab: containerd in %s: %w\n%s", dir, err, TailFile(filepath.Join(dir, "containerd.log"), 20))
	}
	if !opts.NoImages {
		tarPath := opts.ImagesTar
		if tarPath == "" {
			tarPath = filepath.Join(dir, "images.tar")
			logf("building images %s", strings.Join(DefaultImages, " "))
			if err := BuildImages(ctx, tarPath); err != nil {
				return nil, err
			}
		}
		if err := ImportImages(ctx, c.Socket(), tarPath); err != nil {
			return nil, err
		}
		logf("imported %s", tarPath)
	}
	return c, nil
}

// labAddressing picks the bridge and pod subnet: the fixed ones from opts, or a claimed slot.
func labAddressing(dir string, opts ContainerdOptions) (labState, error) {
	st := labState{Owner: opts.Owner, NetNS: opts.NetNS}
	if opts.Subnet != "" {
		if opts.Bridge == "" {
			return st, errors.New("nodelab: ContainerdOptions.Bridge is required with Subnet")
		}
		if _, err := gatewayOf(opts.Subnet); err != nil {
			return st, err
		}
		st.Bridge, st.Subnet = opts.Bridge, opts.Subnet
		return st, nil
	}
	slot, err := claimSlot(dir)
	if err != nil {
		return st, err
	}
	st.Slot, st.Bridge, st.Subnet = slot, bridgeName(slot), slotSubnet(slot)
	return st, nil
}

// StartChild starts cmd so that it is killed (SIGKILL) when this process dies, even when a test
// binary is killed by its timeout; the returned channel closes when the child has exited.
func StartChild(cmd *exec.Cmd) (<-chan struct{}, error) {
	exited := make(chan struct{})
	if err := startProcess(cmd, false, exited); err != nil {
		return nil, err
	}
	return exited, nil
}

// startProcess starts cmd in a process group of its own. Unless detach is set, the child gets
// SIGKILL when this process dies (Pdeathsig); Pdeathsig fires when the forking OS thread exits,
// so the forking goroutine keeps its thread locked until the child is gone.
func startProcess(cmd *exec.Cmd, detach bool, exited chan struct{}) error {
	if detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return err
		}
		go func() { _ = cmd.Wait(); close(exited) }()
		return nil
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			runtime.UnlockOSThread()
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		runtime.UnlockOSThread()
		close(exited)
	}()
	return <-started
}

// dialCRI connects to a CRI socket (lazily; calls fail until the server listens).
func dialCRI(sock string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// waitReady polls the CRI Status until runtime and network are ready.
func waitReady(ctx context.Context, sock string, exited <-chan struct{}) error {
	conn, err := dialCRI(sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	deadline := time.Now().Add(90 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("containerd exited during startup")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := rt.Status(cctx, &runtimeapi.StatusRequest{})
		cancel()
		if err != nil {
			last = err
			continue
		}
		ready := 0
		for _, c := range resp.GetStatus().GetConditions() {
			if (c.Type == runtimeapi.RuntimeReady || c.Type == runtimeapi.NetworkReady) && c.Status {
				ready++
			}
		}
		if ready == 2 {
			return nil
		}
		last = fmt.Errorf("not ready: %v", resp.GetStatus().GetConditions())
	}
	return fmt.Errorf("not ready after 90s: %w", last)
}

// ImportImages imports a docker-archive into containerd's k8s.io namespace, where CRI sees it.
func ImportImages(ctx context.Context, sock, tarPath string) error {
	ctr, err := HostTool("ctr")
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, ctr, "-a", sock, "-n", "k8s.io", "images", "import", tarPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nodelab: ctr images import %s: %w\n%s", tarPath, err, out)
	}
	return nil
}

func readLabState(dir string) (labState, error) {
	var st labState
	b, err := os.ReadFile(filepath.Join(dir, labStateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("nodelab: %s: %w", filepath.Join(dir, labStateFile), err)
	}
	return st, nil
}

func writeLabState(dir string, st labState) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, labStateFile), b, 0o644); err != nil {
		return fmt.Errorf("nodelab: %w", err)
	}
	return nil
}

// TailFile returns the last lines of the file at path ("" if it cannot be read), for error
// messages.
func TailFile(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}
