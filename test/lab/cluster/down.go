package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smr-io/smr-cri/test/lab/nodelab"
	"github.com/smr-io/smr-cri/test/lab/procfs"
)

// DownOptions tunes Down.
type DownOptions struct {
	// KeepLogsIn, if set, receives a copy of the logs directory before the state dir is removed
	// (for a failed run's post-mortem). Empty: nothing of the cluster is left.
	KeepLogsIn string
}

// Down stops the cluster in cfg's state directory and removes everything it made: processes
// (found by their command lines, so it works after a crash), pods and containers, mounts,
// network namespaces, links, routes and the state directory, and restores the host sysctls the
// kubelets changed. It is idempotent.
func Down(ctx context.Context, cfg Config, log io.Writer, opts DownOptions) error {
	c, unlock, err := prepare(cfg, log)
	if err != nil {
		return err
	}
	defer unlock()
	p := newProgress(log)
	err = down(ctx, c, log)
	if opts.KeepLogsIn != "" {
		if cerr := copyDir(c.logDir(), opts.KeepLogsIn); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}
	if rerr := os.RemoveAll(c.Dir); rerr != nil {
		err = errors.Join(err, fmt.Errorf("cluster: remove %s: %w", c.Dir, rerr))
	}
	if err != nil {
		return err
	}
	p.say("cluster down: nothing left in %s", c.Dir)
	return nil
}

// down is Down without removing the state directory (Up uses it to clear leftovers).
func down(ctx context.Context, c Config, log io.Writer) error {
	p := newProgress(log)
	var errs []error
	// 1. kubelets and kube-proxies first, so nothing restarts pods while they are removed.
	if err := stopByProgram(c, "kubelet", "kube-proxy"); err != nil {
		errs = append(errs, err)
	}
	// 2. Pods through smr-cri, so its teardown hooks run; then smr-cri itself.
	nodeDirs, _ := filepath.Glob(filepath.Join(c.Dir, "smr-node*"))
	for _, d := range nodeDirs {
		sock := c.smrSocket(filepath.Base(d))
		if _, err := os.Stat(sock); err == nil {
			if err := nodelab.RemoveAllPods(ctx, sock); err != nil {
				p.say("removing pods through %s: %v (containerd cleanup follows)", sock, err)
			}
		}
	}
	if err := stopByProgram(c, "smr-cri"); err != nil {
		errs = append(errs, err)
	}
	// 3. Each node's containerd: its pods, containers, shims, mounts.
	for _, d := range nodeDirs {
		cd := filepath.Join(d, "containerd")
		if _, err := os.Stat(filepath.Join(cd, "lab.json")); err == nil {
			if err := nodelab.StopContainerd(ctx, cd, nil); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// 4. The control plane, clients before servers (the API server waits for its clients'
	// requests before it exits), then etcd and anything left over.
	for _, prog := range []string{"kube-controller-manager", "kube-scheduler", "kube-apiserver"} {
		if err := stopByProgram(c, prog); err != nil {
			errs = append(errs, err)
		}
	}
	var pids []int
	for _, pr := range ownProcs(c.Dir) {
		pids = append(pids, pr.PID)
	}
	if err := stopProcs(pids, 15*time.Second); err != nil {
		errs = append(errs, err)
	}
	// The kubelets set host-wide sysctls at start; put back the values from before the first.
	if err := nodelab.RestoreKernelTunablesFrom(c.hostSysctls()); err != nil {
		errs = append(errs, err)
	}
	// 5. Mounts (pod volumes under kubelet root dirs, pod network namespaces), then the network.
	if err := nodelab.UnmountUnder(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := teardownNetwork(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := removeLinksInto(containerLogLinks, c.Dir); err != nil {
		errs = append(errs, err)
	}
	removeDevicePluginSocket()
	return errors.Join(errs...)
}

// devicePluginDir is where every kubelet puts its device-plugin socket whatever its --root-dir
// (a compiled-in path). It is removed only while no other kubelet runs on the machine, along
// with the directories if that leaves them empty.
var devicePluginDir = "/var/lib/kubelet/device-plugins"

func removeDevicePluginSocket() {
	for _, p := range procfs.List() {
		if len(p.Args) > 0 && filepath.Base(p.Args[0]) == "kubelet" {
			return
		}
	}
	for _, f := range []string{"kubelet.sock", "kubelet_internal_checkpoint"} {
		_ = os.Remove(filepath.Join(devicePluginDir, f))
	}
	_ = os.Remove(devicePluginDir)               // only if empty
	_ = os.Remove(filepath.Dir(devicePluginDir)) // only if empty
}

// containerLogLinks is where kubelet links every container's log (a fixed path, not under its
// root directory); a kubelet killed before it removed its containers leaves links behind.
var containerLogLinks = "/var/log/containers"

// removeLinksInto removes the symlinks in dir that point into target.
func removeLinksInto(dir, target string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("cluster: %w", err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		dest, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(dest, target+"/") {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cluster: %w", err))
		}
	}
	return errors.Join(errs...)
}

// LeftoverFiles lists files outside the state directory that point into it (for tests).
func LeftoverFiles(c Config) []string {
	var left []string
	entries, _ := os.ReadDir(containerLogLinks)
	for _, e := range entries {
		p := filepath.Join(containerLogLinks, e.Name())
		if dest, err := os.Readlink(p); err == nil && strings.HasPrefix(dest, c.Dir+"/") {
			left = append(left, p)
		}
	}
	return left
}

// stopByProgram stops the cluster's processes whose program has one of the given base names.
func stopByProgram(c Config, names ...string) error {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var pids []int
	for _, pr := range ownProcs(c.Dir) {
		if len(pr.Args) > 0 && want[filepath.Base(pr.Args[0])] {
			pids = append(pids, pr.PID)
		}
	}
	return stopProcs(pids, 15*time.Second)
}

// copyDir copies the regular files of src into dst, following symlinks (flat; the logs
// directory has no subdirs, and smr-cri's logs there are links into the trace directory).
func copyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("cluster: keep logs: %w", err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("cluster: keep logs: %w", err)
	}
	for _, e := range entries {
		if fi, err := os.Stat(filepath.Join(src, e.Name())); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return fmt.Errorf("cluster: keep logs: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return fmt.Errorf("cluster: keep logs: %w", err)
		}
	}
	return nil
}
