package nodelab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/smr-io/smr-cri/test/lab/procfs"
)

// KubeletOptions configures StartKubelet: a standalone kubelet (static pods, no API server).
type KubeletOptions struct {
	// Dir holds the kubelet's config, root dir, certificates, static pod manifests and pod logs.
	Dir string
	// RuntimeEndpoint is the CRI endpoint (unix://...), e.g. smr-cri's socket.
	RuntimeEndpoint string
	// NodeName is --hostname-override; default "smr-lab-node".
	NodeName string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Kubelet is a running standalone kubelet in a network namespace of its own: kubelet programs
// iptables (KUBE-* chains), and inside its own namespace they disappear with it. Pods still get
// their network from containerd's CNI, so they are unaffected.
type Kubelet struct {
	dir     string
	netns   string
	pid     int
	exited  <-chan struct{}
	sysctls Sysctls
}

// ManifestDir is the static pod directory (staticPodPath); drop pod YAML files here.
func (k *Kubelet) ManifestDir() string { return filepath.Join(k.dir, "manifests") }

// PodLogsDir is where kubelet asks the runtime to write container logs (podLogsDir).
func (k *Kubelet) PodLogsDir() string { return filepath.Join(k.dir, "pod-logs") }

// LogFile is the kubelet's own log.
func (k *Kubelet) LogFile() string { return filepath.Join(k.dir, "kubelet.log") }

// Config from NODE-LAB.md (verified with containerd 1.6 on these machines): cgroups v1 hybrid
// layout, no swap check, no QoS cgroups; plus paths kept inside Dir.
var kubeletConfigTemplate = template.Must(template.New("kubelet").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: {{.Endpoint}}
staticPodPath: {{.Dir}}/manifests
podLogsDir: {{.Dir}}/pod-logs
volumePluginDir: {{.Dir}}/volume-plugins
fileCheckFrequency: 1s
syncFrequency: 5s
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
readOnlyPort: 0
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
evictionHard: {}
resolvConf: ""
`))

const netnsPrefix = "smr-kubelet-"

// StartKubelet starts kubelet (built by hack/install-deps.sh) in a fresh network namespace with
// nsenter --net= (ip netns exec would remount /sys and kubelet would not find its cgroups).
func StartKubelet(ctx context.Context, opts KubeletOptions) (_ *Kubelet, err error) {
	if opts.Dir == "" || opts.RuntimeEndpoint == "" {
		return nil, errors.New("nodelab: KubeletOptions.Dir and RuntimeEndpoint are required")
	}
	if !strings.HasPrefix(opts.RuntimeEndpoint, "unix://") {
		return nil, fmt.Errorf("nodelab: runtime endpoint %q: want unix:///path", opts.RuntimeEndpoint)
	}
	if err := CheckRoot(); err != nil {
		return nil, err
	}
	bin, err := CachedTool("kubelet")
	if err != nil {
		return nil, err
	}
	nsenter, err := HostTool("nsenter")
	if err != nil {
		return nil, err
	}
	ip, err := HostTool("ip")
	if err != nil {
		return nil, err
	}
	if opts.NodeName == "" {
		opts.NodeName = "smr-lab-node"
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("nodelab: %w", err)
	}
	sweepKubelets(ctx)
	for _, d := range []string{"manifests", "pod-logs", "root", "pki", "volume-plugins"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("nodelab: %w", err)
		}
	}
	var cfg strings.Builder
	if err := kubeletConfigTemplate.Execute(&cfg, map[string]string{"Dir": dir, "Endpoint": opts.RuntimeEndpoint}); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "kubelet.yaml"), []byte(cfg.String()), 0o644); err != nil {
		return nil, fmt.Errorf("nodelab: %w", err)
	}
	// KernelTunables: host-wide sysctls kubelet sets at start, restored by Stop.
	k := &Kubelet{dir: dir, netns: netnsPrefix + strconv.Itoa(os.Getpid()), sysctls: SaveKernelTunables()}
	defer func() {
		if err != nil {
			_ = k.Stop()
		}
	}()
	// Recorded so that SweepStale can clean up after a test binary that was killed.
	if err := os.MkdirAll(KubeletRegistry, 0o755); err != nil {
		return nil, fmt.Errorf("nodelab: %w", err)
	}
	if err := os.WriteFile(filepath.Join(KubeletRegistry, k.netns), []byte(dir), 0o644); err != nil {
		return nil, fmt.Errorf("nodelab: %w", err)
	}
	if out, err := exec.CommandContext(ctx, ip, "netns", "add", k.netns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nodelab: ip netns add %s: %w: %s", k.netns, err, out)
	}
	if out, err := exec.CommandContext(ctx, ip, "-n", k.netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nodelab: lo up in %s: %w: %s", k.netns, err, out)
	}
	logFile, err := os.OpenFile(k.LogFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("nodelab: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(nsenter, "--net=/var/run/netns/"+k.netns, "--", bin,
		"--config", filepath.Join(dir, "kubelet.yaml"),
		"--root-dir", filepath.Join(dir, "root"),
		"--cert-dir", filepath.Join(dir, "pki"),
		"--hostname-override", opts.NodeName,
		"--v", "2")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	k.exited, err = StartChild(cmd)
	if err != nil {
		return nil, fmt.Errorf("nodelab: start kubelet: %w", err)
	}
	k.pid = cmd.Process.Pid
	if opts.Log != nil {
		fmt.Fprintf(opts.Log, "nodelab: kubelet pid %d in netns %s, runtime %s, log %s\n", k.pid, k.netns, opts.RuntimeEndpoint, k.LogFile())
	}
	// kubelet has no readiness signal without an API server; give it a moment to fail fast.
	select {
	case <-k.exited:
		return nil, fmt.Errorf("nodelab: kubelet exited at start:\n%s", TailFile(k.LogFile(), 30))
	case <-time.After(2 * time.Second):
	}
	return k, nil
}

// Exited closes when kubelet has exited.
func (k *Kubelet) Exited() <-chan struct{} { return k.exited }

// Stop stops kubelet (its pods keep running in the runtime: stop the runtime's lab to remove
// them), deletes its network namespace, the /var/log/containers links it made into Dir, and
// restores the kernel settings it changed. Idempotent.
func (k *Kubelet) Stop() error {
	var errs []error
	if k.pid > 0 {
		if err := Terminate(k.pid, 15*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("stop kubelet: %w", err))
		}
		if k.exited != nil {
			<-k.exited
		}
		k.pid = 0
	}
	if err := cleanKubeletLeftovers(k.netns, k.dir); err != nil {
		errs = append(errs, err)
	}
	if err := k.sysctls.Restore(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// KubeletRegistry records running lab kubelets: one file per kubelet, named after its network
// namespace (smr-kubelet-<owner pid>), holding its directory.
var KubeletRegistry = "/run/smr-nodelab/kubelets"

// cleanKubeletLeftovers removes what a stopped kubelet leaves: the mounts under its directory
// (it bind-mounts its root dir onto itself), its network namespace, the /var/log/containers
// links into its directory, and its registry entry.
func cleanKubeletLeftovers(netns, dir string) error {
	var errs []error
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	if _, err := os.Stat("/var/run/netns/" + netns); err == nil {
		if out, err := exec.Command("ip", "netns", "del", netns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", netns, err, out))
		}
	}
	links, _ := filepath.Glob("/var/log/containers/*.log")
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, dir+"/") {
			os.Remove(l)
		}
	}
	if len(errs) == 0 {
		os.Remove(filepath.Join(KubeletRegistry, netns))
	}
	return errors.Join(errs...)
}

// sweepKubelets cleans up after lab kubelets whose owner process is gone (the kubelet itself
// died with it: it runs with Pdeathsig).
func sweepKubelets(ctx context.Context) []error {
	entries, _ := os.ReadDir(KubeletRegistry)
	var errs []error
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(rest)
		if err != nil || procfs.Alive(pid) || ctx.Err() != nil {
			continue
		}
		dir, err := os.ReadFile(filepath.Join(KubeletRegistry, e.Name()))
		if err != nil {
			continue
		}
		if err := cleanKubeletLeftovers(e.Name(), string(dir)); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}
