package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/smr-io/smr-cri/test/lab/nodelab"
	"github.com/smr-io/smr-cri/test/lab/procfs"
)

// Images imported into every node's containerd (nothing can be pulled on these machines);
// SmrCRIImage is the DaemonSet's (TraceOverlay).
var Images = []string{nodelab.PauseImage, nodelab.BusyboxImage, nodelab.RedisImage, nodelab.ExampleRedisImage, nodelab.SmrCRIImage}

// Cluster is a running cluster.
type Cluster struct {
	Config
	Nodes []Node
}

// progress prints "[cluster 12.3s] what" lines and times steps.
type progress struct {
	w     io.Writer
	start time.Time
	mu    sync.Mutex
}

func newProgress(w io.Writer) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, start: time.Now()}
}

func (p *progress) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[cluster %6.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// step runs f and reports how long it took.
func (p *progress) step(what string, f func() error) error {
	t0 := time.Now()
	p.say("%s ...", what)
	if err := f(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	p.say("%s: done in %.1fs", what, time.Since(t0).Seconds())
	return nil
}

// Up cleans whatever an earlier cluster in the same state directory left (even after SIGKILL),
// then starts a fresh cluster (new CA, empty etcd) and waits until every node is Ready. Progress
// goes to log. On error the partly started cluster stays up for inspection; Down removes it.
func Up(ctx context.Context, cfg Config, log io.Writer) (*Cluster, error) {
	return boot(ctx, cfg, log, true)
}

// Start brings a stopped (Stop) or crashed cluster back on its existing state: the same CA and
// credentials, etcd's data, containerd's images, kubelet's volumes. The node count must match.
func Start(ctx context.Context, cfg Config, log io.Writer) (*Cluster, error) {
	return boot(ctx, cfg, log, false)
}

// Stop stops every process of the cluster and removes its network and mounts like Down, but
// keeps the state directory for Start.
func Stop(ctx context.Context, cfg Config, log io.Writer) error {
	c, unlock, err := prepare(cfg, log)
	if err != nil {
		return err
	}
	defer unlock()
	p := newProgress(log)
	return p.step("stop the cluster (state kept in "+c.Dir+")", func() error { return down(ctx, c, log) })
}

// prepare resolves cfg, checks that this process may run the cluster and takes the
// machine-wide cluster lock; the caller runs the returned release function when done.
func prepare(cfg Config, log io.Writer) (Config, func(), error) {
	c, err := cfg.Resolve()
	if err != nil {
		return c, nil, err
	}
	if err := nodelab.CheckRoot(); err != nil {
		return c, nil, err
	}
	unlock, err := lock(log)
	return c, unlock, err
}

func boot(ctx context.Context, cfg Config, log io.Writer, fresh bool) (*Cluster, error) {
	c, unlock, err := prepare(cfg, log)
	if err != nil {
		return nil, err
	}
	defer unlock()
	nodes, err := Nodes(c.Nodes)
	if err != nil {
		return nil, err
	}
	cl := &Cluster{Config: c, Nodes: nodes}
	p := newProgress(log)
	p.say("state dir %s, %d nodes", c.Dir, len(nodes))
	booted := time.Now() // node heartbeats older than this are the previous run's
	if !fresh {
		if _, err := os.Stat(c.kubeconfig("kubelet-" + nodes[len(nodes)-1].Name)); err != nil {
			return nil, fmt.Errorf("cluster: no stopped cluster of %d nodes in %s (use Up): %w", len(nodes), c.Dir, err)
		}
	}
	if err := p.step("build missing binaries", func() error { return ensureBinaries(ctx, c, p) }); err != nil {
		return nil, err
	}
	if err := p.step("clean up leftovers", func() error {
		if err := down(ctx, c, io.Discard); err != nil {
			return err
		}
		if !fresh {
			return nil
		}
		// A fresh cluster every time: old etcd data would hold objects signed by an old CA.
		return os.RemoveAll(c.Dir)
	}); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	// Before any kubelet starts (they change host-wide sysctls): down restores these.
	if err := nodelab.SaveKernelTunablesTo(c.hostSysctls()); err != nil {
		return nil, err
	}
	if err := p.step("certificates and configs", func() error {
		if fresh {
			if err := writePKI(c, nodes); err != nil {
				return err
			}
		}
		for _, n := range nodes {
			if err := writeNodeConfigs(c, n); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := p.step("network: bridge "+BridgeName+", node namespaces, routes", func() error { return setupNetwork(ctx, nodes) }); err != nil {
		return nil, err
	}
	// The images are built while the control plane starts; nodes wait for them.
	imagesTar := filepath.Join(c.Dir, "images.tar")
	imagesDone := make(chan error, 1)
	go func() {
		t0 := time.Now()
		err := nodelab.BuildImages(ctx, imagesTar, Images...)
		if err == nil {
			p.say("images %s built in %.1fs", strings.Join(Images, " "), time.Since(t0).Seconds())
		}
		imagesDone <- err
	}()
	if err := p.step("control plane", func() error { return cl.startControlPlane(ctx) }); err != nil {
		<-imagesDone
		return cl, err
	}
	// Before any smr-cri can ask for the raft CA Secret or watch pods: the install path's
	// namespace and RBAC, so serve here runs with exactly the permissions it has on kind.
	if err := p.step("smr-cri namespace and RBAC ("+InstallManifests+"/ without the DaemonSet)", func() error { return cl.ApplyInstallRBAC(ctx) }); err != nil {
		<-imagesDone
		return cl, err
	}
	if err := <-imagesDone; err != nil {
		return cl, fmt.Errorf("cluster: images: %w", err)
	}
	if err := p.step(fmt.Sprintf("%d nodes (containerd, smr-cri, kubelet, kube-proxy)", len(nodes)), func() error {
		errs := make([]error, len(nodes))
		var wg sync.WaitGroup
		for i, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = cl.startNode(ctx, n, imagesTar, p)
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}); err != nil {
		return cl, err
	}
	if err := p.step("wait for nodes Ready and the default service account", func() error { return cl.waitReady(ctx, booted) }); err != nil {
		return cl, err
	}
	p.say("cluster up: kubectl --kubeconfig %s get nodes", c.AdminKubeconfig())
	p.say("memory: %s", MeasureRSS(c))
	return cl, nil
}

// ensureBinaries builds what is missing: bin/smr-cri (always rebuilt, cheap when cached) and the
// Kubernetes binaries (hack/cluster/build-kube.sh, which skips what its stamps say is current).
func ensureBinaries(ctx context.Context, c Config, p *progress) error {
	for _, t := range []string{"nsenter", "ip", "iptables", "sysctl", "containerd", "ctr", "runc"} {
		if _, err := nodelab.HostTool(t); err != nil {
			return err
		}
	}
	if _, err := os.Stat(c.Etcd); err != nil {
		return fmt.Errorf("cluster: etcd %s: %w: %w", c.Etcd, err, nodelab.ErrMissing)
	}
	if _, err := os.Stat(c.Kubelet); err != nil {
		return fmt.Errorf("cluster: kubelet %s: %w: %w", c.Kubelet, err, nodelab.ErrMissing)
	}
	script := filepath.Join(c.RepoRoot, "hack", "cluster", "build-kube.sh")
	cmd := exec.CommandContext(ctx, script)
	cmd.Stdout, cmd.Stderr = p.w, p.w
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cluster: %s: %w", script, err)
	}
	if c.SmrCRI == filepath.Join(c.RepoRoot, "bin", "smr-cri") {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", c.SmrCRI, "./cmd/smr-cri")
		cmd.Dir = c.RepoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("cluster: go build ./cmd/smr-cri: %w\n%s", err, out)
		}
	}
	return nil
}

// startControlPlane starts etcd and kube-apiserver (waiting for each to be healthy), then the
// controller manager and the scheduler.
func (cl *Cluster) startControlPlane(ctx context.Context) error {
	c := cl.Config
	if err := os.MkdirAll(filepath.Join(c.Dir, "etcd"), 0o700); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	pid, err := start(c, etcdProc(c))
	if err != nil {
		return err
	}
	etcdHealth := fmt.Sprintf("http://%s:%d/health", HostIP, EtcdPort)
	if err := c.waitFor(ctx, "etcd", pid, time.Minute, func() error {
		return httpOK(ctx, http.DefaultClient, etcdHealth, `"true"`)
	}); err != nil {
		return err
	}
	if pid, err = start(c, apiServerProc(c)); err != nil {
		return err
	}
	client, err := c.apiClient()
	if err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-apiserver", pid, 2*time.Minute, func() error {
		return httpOK(ctx, client, c.apiServerURL()+"/readyz", "ok")
	}); err != nil {
		return err
	}
	for _, proc := range []process{controllerManagerProc(c), schedulerProc(c)} {
		if _, err := start(c, proc); err != nil {
			return err
		}
	}
	return nil
}

// startNode starts containerd in the node namespace (importing the images), smr-cri in front of
// it, then kubelet and kube-proxy.
func (cl *Cluster) startNode(ctx context.Context, n Node, imagesTar string, p *progress) error {
	c := cl.Config
	t0 := time.Now()
	_, err := nodelab.StartContainerd(ctx, nodelab.ContainerdOptions{
		Dir:       c.containerdDir(n.Name),
		ImagesTar: imagesTar,
		Detach:    true,
		Subnet:    n.PodSubnet,
		Bridge:    podBridge,
		NetNS:     n.NetNS(),
	})
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	p.say("%s: containerd ready, images imported (%.1fs)", n.Name, time.Since(t0).Seconds())
	if err := cl.startSmrCRI(ctx, n); err != nil {
		return err
	}
	for _, proc := range []process{kubeletProc(c, n), kubeProxyProc(c, n)} {
		if _, err := start(c, proc); err != nil {
			return err
		}
	}
	p.say("%s: smr-cri, kubelet and kube-proxy started (%.1fs)", n.Name, time.Since(t0).Seconds())
	return nil
}

// startSmrCRI starts smr-cri in node n and waits until it listens. A socket left by a killed
// smr-cri is removed by smr-cri itself, so the wait is for a socket that answers.
func (cl *Cluster) startSmrCRI(ctx context.Context, n Node) error {
	c := cl.Config
	known, err := serveFlags(ctx, c.SmrCRI)
	if err != nil {
		return err
	}
	if known["pki-dir"] {
		if err := ensureRaftCA(ctx, c); err != nil {
			return err
		}
	}
	pid, err := start(c, smrCRIProc(c, n, known))
	if err != nil {
		return err
	}
	sock := c.smrSocket(n.Name)
	return c.waitFor(ctx, n.Name+"-smr-cri", pid, 30*time.Second, func() error {
		conn, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	})
}

// nsenterCmd runs a program in node n's network namespace.
func nsenterCmd(ctx context.Context, n Node, prog string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.NetNS(), "--", prog}, args...)...)
}

// waitReady waits until every node reports Ready (with a heartbeat since the boot began) and the
// controller manager has made the default ServiceAccount (pods are rejected without it).
func (cl *Cluster) waitReady(ctx context.Context, since time.Time) error {
	pids, err := startedPIDs(cl.Config)
	if err != nil {
		return err
	}
	return cl.waitFor(ctx, "nodes", 0, 3*time.Minute, func() error {
		for _, pid := range pids {
			if !procfs.Alive(pid) {
				return fmt.Errorf("%w: pid %d exited (see %s)", errDied, pid, cl.logDir())
			}
		}
		ready, err := cl.readyNodesSince(ctx, since)
		if err != nil {
			return err
		}
		if len(ready) != len(cl.Nodes) {
			return fmt.Errorf("ready nodes %v, want %d", ready, len(cl.Nodes))
		}
		_, err = cl.Kubectl(ctx, "get", "serviceaccount", "default", "-n", "default")
		return err
	})
}

var errDied = errors.New("process died")

// waitFor polls check every 250ms until it succeeds, the process pid (if > 0) dies, or timeout.
func (c Config) waitFor(ctx context.Context, what string, pid int, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		if errors.Is(last, errDied) {
			return fmt.Errorf("cluster: %s: %w", what, last)
		}
		if pid > 0 && !procfs.Alive(pid) {
			logPath := filepath.Join(c.logDir(), what+".log")
			return fmt.Errorf("cluster: %s (pid %d) exited; last lines of %s:\n%s", what, pid, logPath, nodelab.TailFile(logPath, 15))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster: %s not ready after %s: %w", what, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// apiClient trusts the cluster CA (for health checks; /readyz is public).
func (c Config) apiClient() (*http.Client, error) {
	caPEM, err := os.ReadFile(filepath.Join(c.pkiDir(), "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}, nil
}

func httpOK(ctx context.Context, client *http.Client, url, want string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Kubectl runs kubectl with the admin kubeconfig and returns its stdout; stderr goes into the error.
func (c Config) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return c.KubectlIn(ctx, "", args...)
}

// KubectlIn is Kubectl with stdin, if not "", fed to kubectl (for `apply -f -`).
func (c Config) KubectlIn(ctx context.Context, stdin string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.KubectlPath(), append([]string{"--kubeconfig", c.AdminKubeconfig()}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// ReadyNodes lists the nodes whose Ready condition is True.
func (c Config) ReadyNodes(ctx context.Context) ([]string, error) {
	return c.readyNodesSince(ctx, time.Time{})
}

// readyNodesSince lists the nodes that are Ready with a heartbeat at or after since (after a
// restart the API still shows the last status the old kubelets reported).
func (c Config) readyNodesSince(ctx context.Context, since time.Time) ([]string, error) {
	out, err := c.Kubectl(ctx, "get", "nodes", "-o", "json")
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status struct {
				Conditions []struct {
					Type          string    `json:"type"`
					Status        string    `json:"status"`
					LastHeartbeat time.Time `json:"lastHeartbeatTime"`
				} `json:"conditions"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("cluster: kubectl get nodes: %w", err)
	}
	since = since.Truncate(time.Second) // API times have second resolution
	var ready []string
	for _, n := range list.Items {
		for _, cond := range n.Status.Conditions {
			if cond.Type == "Ready" && cond.Status == "True" && !cond.LastHeartbeat.Before(since) {
				ready = append(ready, n.Metadata.Name)
			}
		}
	}
	return ready, nil
}
