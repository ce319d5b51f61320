package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/cri"
	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// serveLab is one real `smr-cri serve` process in front of a private
// containerd, with stdout and stderr appended to one log file as the
// installed systemd unit does.
type serveLab struct {
	t       testing.TB
	bin     string
	args    []string
	logPath string
	cmd     *exec.Cmd
	exited  <-chan struct{}
	sock    string
}

func buildSmrCri(t testing.TB, ctx context.Context) string {
	t.Helper()
	root, err := nodelab.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "smr-cri")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/smr-cri")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build smr-cri: %v\n%s", err, out)
	}
	return bin
}

func (s *serveLab) start() {
	s.t.Helper()
	log, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	defer log.Close()
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if s.exited, err = nodelab.StartChild(s.cmd); err != nil {
		s.t.Fatalf("start smr-cri serve: %v", err)
	}
}

func (s *serveLab) signal(sig syscall.Signal) {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(2 * time.Minute):
		s.t.Errorf("smr-cri serve did not exit after %v", sig)
	}
	s.cmd = nil
}

func (s *serveLab) log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// waitFor polls cond until it holds or ctx ends (no timing is asserted: the
// deadline only bounds a broken run).
func waitFor(t testing.TB, ctx context.Context, what string, cond func() (bool, string)) {
	t.Helper()
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last state: %s)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// groupSpec is one replicated app for startReplicatedGroup.
type groupSpec struct {
	app   string // pod name prefix and "app" label: the group is smrtest.<app>
	image string
	ports string // podcontract.AnnotationPorts, e.g. "6379/resp"
	// prepare runs on the private containerd before serve starts, e.g. to
	// import an image the lab does not build by default.
	prepare func(ctx context.Context, c *nodelab.Containerd) error
	// serveArgs are appended to serve's arguments (e.g. --metrics-addr).
	serveArgs []string
}

// labPod is one started member of the group.
type labPod struct {
	name, sandbox, ip, netns string
}

// groupLab is one real `smr-cri serve` in front of a private containerd
// with three pods of one replicated group created through serve's CRI socket.
type groupLab struct {
	c    *nodelab.Containerd
	s    *serveLab
	rt   runtimeapi.RuntimeServiceClient
	dir  string
	pods []labPod
}

// startReplicatedGroup starts the private containerd and serve, and creates
// the three pods of spec through smr-cri with static smr.io/peers at the
// pod IPs the lab's IPAM will hand out. Everything is torn down at cleanup.
func startReplicatedGroup(t testing.TB, ctx context.Context, spec groupSpec) *groupLab {
	t.Helper()
	c := nodelab.StartContainerdT(t)
	if spec.prepare != nil {
		if err := spec.prepare(ctx, c); err != nil {
			t.Fatalf("prepare containerd for %s: %v", spec.app, err)
		}
	}
	dir := t.TempDir()
	s := &serveLab{t: t, bin: buildSmrCri(t, ctx), logPath: filepath.Join(dir, "smr-cri.log"), sock: filepath.Join(dir, "smr-cri.sock")}
	s.args = []string{"serve", "--listen", s.sock, "--runtime-endpoint", c.Endpoint(),
		"--data-dir", filepath.Join(dir, "data"), "--log-level", "info", "--shutdown-timeout", "20s"}
	if !slices.Contains(spec.serveArgs, "--insecure-raft") { // the two exclude each other
		s.args = append(s.args, "--pki-dir", filepath.Join(dir, "pki"))
	}
	s.args = append(s.args, spec.serveArgs...)
	s.start()
	t.Cleanup(func() {
		s.signal(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("smr-cri log:\n%s", s.log())
		}
	})

	conn, err := grpc.NewClient("unix://"+s.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	// Wait for serve's socket, but not past serve's exit (a bad flag).
	vctx, vcancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.exited:
		case <-vctx.Done():
		}
		vcancel()
	}()
	_, err = rt.Version(vctx, &runtimeapi.VersionRequest{}, grpc.WaitForReady(true))
	vcancel()
	if err != nil {
		t.Fatalf("smr-cri serve not answering (log below if it exited): %v", err)
	}
	g := &groupLab{c: c, s: s, rt: rt, dir: dir}

	// Static membership names the pod IPs, known before the pods run: the
	// lab's host-local IPAM hands out a fresh subnet's addresses in order,
	// after the gateway (.1). Checked below against the real IPs.
	prefix, err := netip.ParsePrefix(c.Subnet())
	if err != nil {
		t.Fatal(err)
	}
	ip := prefix.Masked().Addr().Next()
	var ips, peers []string
	for i := range 3 {
		ip = ip.Next()
		ips = append(ips, ip.String())
		peers = append(peers, fmt.Sprintf("%d=%s:7480", i+1, ip))
	}
	for i := range 3 {
		name := fmt.Sprintf("%s-%d", spec.app, i)
		cfg := &runtimeapi.PodSandboxConfig{
			Metadata:    &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "smrtest", Uid: "uid-" + name},
			Labels:      map[string]string{podcontract.LabelReplicate: podcontract.ValueReplicate, "app": spec.app},
			Annotations: map[string]string{podcontract.AnnotationPorts: spec.ports, podcontract.AnnotationPeers: strings.Join(peers, ",")},
		}
		p := g.runPod(t, ctx, cfg, spec.app, spec.image)
		if p.ip != ips[i] {
			t.Fatalf("pod %s got IP %s, the static peers assumed %s", name, p.ip, ips[i])
		}
		g.pods = append(g.pods, p)
	}
	return g
}

// runPod runs a pod with cfg and one container of image named ctrName
// through smr-cri, and returns it with its first IP and its netns. The pod
// is stopped and removed through smr-cri (detach, redirect removed) at
// cleanup; containerd's own cleanup by nodelab catches anything left.
func (g *groupLab) runPod(t testing.TB, ctx context.Context, cfg *runtimeapi.PodSandboxConfig, ctrName, image string) labPod {
	t.Helper()
	name := cfg.GetMetadata().GetName()
	cfg.LogDirectory = filepath.Join(g.dir, "logs", name)
	if cfg.Linux == nil {
		cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{}
	}
	run, err := g.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("RunPodSandbox %s through smr-cri: %v", name, err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer ccancel()
		_, _ = g.rt.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: run.PodSandboxId})
		_, _ = g.rt.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: run.PodSandboxId})
	})
	ctr, err := g.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: run.PodSandboxId, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: ctrName},
			Image: &runtimeapi.ImageSpec{Image: image}, LogPath: ctrName + ".log"}})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", name, err)
	}
	if _, err := g.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("StartContainer %s: %v", name, err)
	}
	st, err := g.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: run.PodSandboxId, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := cri.SandboxPodInfo(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(pod.IPs) == 0 {
		t.Fatalf("pod %s has no IP", name)
	}
	return labPod{name: name, sandbox: run.PodSandboxId, ip: pod.IPs[0], netns: pod.NetNSPath}
}

// retry runs op until it succeeds (apps coming up, first election, RESETs).
func retry(t testing.TB, ctx context.Context, what string, op func() error) {
	t.Helper()
	var err error
	waitFor(t, ctx, what, func() (bool, string) {
		err = op()
		return err == nil, fmt.Sprint(err)
	})
}

// checkTraces waits for at least want ordering trace lines of the group in
// serve's output (the tracer flushes in the background) and checks that
// raft between the members ran over mutual TLS.
func (g *groupLab) checkTraces(t *testing.T, ctx context.Context, group string, want int) {
	t.Helper()
	waitFor(t, ctx, "an ordering trace line per request and replica in serve's output", func() (bool, string) {
		n := strings.Count(g.s.log(), "smr=commit group="+group)
		return n >= want, fmt.Sprintf("%d trace lines, want %d", n, want)
	})
	// Raft between the members ran over mutual TLS, with the cluster CA
	// serve created in --pki-dir at the first member's start.
	if n := strings.Count(g.s.log(), "raft_security=mtls"); n != 3 {
		t.Errorf("%d members logged raft_security=mtls, want 3", n)
	}
	if !strings.Contains(g.s.log(), `cluster CA for raft mutual TLS loaded" source="created in `+filepath.Join(g.dir, "pki")) {
		t.Errorf("serve did not create the cluster CA in its --pki-dir")
	}
}

type replica struct {
	labPod
	viaPod *redis.Client // podIP:6379 from the host: redirected to smr-cri
	direct *redis.Client // 127.0.0.1:6379 inside the pod netns: the app itself
}

// TestIntegrationServeReplicatesRedis runs three Redis pods of one group
// through one real `smr-cri serve` process in front of a private containerd
// (nodelab): the three members live in one process, each with its raft
// endpoint at its own pod IP inside its own netns. Clients write through one
// replica and read through another, concurrent INCRs end equal on every
// replica's app, the ordering traces reach serve's stdout log, and after a
// SIGKILL of serve and a restart the pods keep running, are re-attached, and
// nothing is applied twice.
func TestIntegrationServeReplicatesRedis(t *testing.T) {
	nodelab.RequireIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	g := startReplicatedGroup(t, ctx, groupSpec{app: "redis", image: nodelab.RedisImage, ports: "6379/resp"})
	c, s := g.c, g.s
	reps := make([]*replica, len(g.pods))
	for i, p := range g.pods {
		r := &replica{labPod: p}
		r.viaPod = redis.NewClient(&redis.Options{Addr: net.JoinHostPort(r.ip, "6379"), Protocol: 2, DisableIdentity: true, MaxRetries: -1})
		netns := r.netns
		r.direct = redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", Protocol: 2, DisableIdentity: true,
			Dialer: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return netintercept.DialInNetns(ctx, netns, "tcp4", addr)
			}})
		defer r.viaPod.Close()
		defer r.direct.Close()
		reps[i] = r
	}

	retry(t, ctx, "SET through redis-0", func() error { return reps[0].viaPod.Set(ctx, "greeting", "hello", 0).Err() })
	retry(t, ctx, "GET through redis-1", func() error {
		v, err := reps[1].viaPod.Get(ctx, "greeting").Result()
		if err == nil && v != "hello" {
			return fmt.Errorf("GET greeting via redis-1 = %q, want hello", v)
		}
		return err
	})

	// Concurrent INCRs through every replica.
	incrAll := func(clients, each int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for cl := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := redis.NewClient(&redis.Options{Addr: net.JoinHostPort(reps[cl%3].ip, "6379"), Protocol: 2,
					DisableIdentity: true, MaxRetries: -1, PoolSize: 1})
				defer c.Close()
				for i := 0; i < each; i++ {
					if err := c.Incr(ctx, "counter").Err(); err != nil {
						// An INCR whose outcome is unknown would make the
						// expected total unknown: fail instead of retrying.
						errs <- fmt.Errorf("client %d INCR %d via %s: %w", cl, i, reps[cl%3].name, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	equalEverywhere := func(want int64) {
		t.Helper()
		waitFor(t, ctx, fmt.Sprintf("counter=%d on every replica's app", want), func() (bool, string) {
			var got []string
			ok := true
			for _, r := range reps {
				v, err := r.direct.Get(ctx, "counter").Int64()
				got = append(got, fmt.Sprintf("%s=%d(%v)", r.name, v, err))
				ok = ok && err == nil && v == want
			}
			return ok, strings.Join(got, " ")
		})
		for _, r := range reps {
			if v, err := r.direct.Get(ctx, "greeting").Result(); err != nil || v != "hello" {
				t.Fatalf("%s app: greeting=%q (%v), want hello", r.name, v, err)
			}
		}
	}
	const clients, each = 6, 50
	start := time.Now()
	incrAll(clients, each)
	t.Logf("%d concurrent clients, %d INCRs through the 3 replicas' pod IPs: %.0f INCR/s (informative)",
		clients, clients*each, float64(clients*each)/time.Since(start).Seconds())
	equalEverywhere(clients * each)

	// Ordering traces on serve's stdout (the unit's log file).
	g.checkTraces(t, ctx, "smrtest.redis", 3*clients*each)
	if !strings.Contains(s.log(), `op="INCR"`) {
		t.Fatal(`no op="INCR" trace line in serve's output`)
	}

	// SIGKILL the daemon: the pods keep running.
	s.signal(syscall.SIGKILL)
	direct := dialContainerd(t, c)
	for _, r := range reps {
		st, err := direct.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: r.sandbox})
		if err != nil || st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Fatalf("%s after smr-cri SIGKILL: %v %v, want READY", r.name, st.GetStatus().GetState(), err)
		}
		if v, err := r.direct.Get(ctx, "counter").Int64(); err != nil || v != clients*each {
			t.Fatalf("%s app after smr-cri SIGKILL: counter=%d (%v)", r.name, v, err)
		}
	}
	before := strings.Count(s.log(), "re-attached running replicated pod")
	restarted := time.Now()
	s.start()
	waitFor(t, ctx, "the three pods re-attached", func() (bool, string) {
		n := strings.Count(s.log(), "re-attached running replicated pod") - before
		return n == 3, fmt.Sprintf("%d re-attached", n)
	})
	t.Logf("re-attached 3 pods %v after the restart (informative)", time.Since(restarted).Round(time.Millisecond))
	// The apps were not replayed into: still the same counter.
	for _, r := range reps {
		if v, err := r.direct.Get(ctx, "counter").Int64(); err != nil || v != clients*each {
			t.Fatalf("%s app after re-attach: counter=%d (%v), want %d (no entry applied twice)", r.name, v, err, clients*each)
		}
	}
	for _, r := range reps {
		retry(t, ctx, "SET through "+r.name+" after restart", func() error { return r.viaPod.Set(ctx, "after", r.name, 0).Err() })
	}
	incrAll(clients, each)
	equalEverywhere(2 * clients * each)
	if !strings.Contains(s.log(), "resumed executor at the running app's position") {
		t.Fatal("serve's log does not say the executors resumed at the apps' positions")
	}
	for _, line := range strings.Split(s.log(), "\n") {
		if strings.Contains(line, "resumed executor") || strings.Contains(line, "re-attached running") {
			t.Log(line)
		}
	}
	t.Logf("%d ordering trace lines in serve's output", strings.Count(s.log(), "smr=commit"))
}

func dialContainerd(t *testing.T, c *nodelab.Containerd) runtimeapi.RuntimeServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(c.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn)
}

// kvReplica is one kvstore member: through its pod IP (redirected to
// smr-cri) and directly at its app inside its netns.
type kvReplica struct {
	labPod
	viaPod *http.Client // podIP:8080 from the host
	direct *http.Client // 127.0.0.1:8080 inside the pod netns: the app itself
}

// kvDo sends one request and returns the status and body, reading the body
// fully so that the keep-alive connection goes back to the pool.
func kvDo(ctx context.Context, c *http.Client, method, url, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, url, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", fmt.Errorf("%s %s: read body: %w", method, url, err)
	}
	return resp.StatusCode, string(b), nil
}

// kvExpect is kvDo failing unless the status is want.
func kvExpect(ctx context.Context, c *http.Client, method, url, body string, want int) (string, error) {
	code, got, err := kvDo(ctx, c, method, url, body)
	if err != nil {
		return "", err
	}
	if code != want {
		return "", fmt.Errorf("%s %s: status %d (%q), want %d", method, url, code, got, want)
	}
	return got, nil
}

// TestIntegrationServeReplicatesKVStore is the Redis test's counterpart for
// the HTTP key-value service of examples/kvstore (image localhost/kvstore:smr,
// smr.io/ports "8080/http"): a PUT through one pod IP is read back through
// another, concurrent POST /incr through every replica over keep-alive
// connections ends equal on every replica's app, and serve logs the
// ordering traces of the group.
func TestIntegrationServeReplicatesKVStore(t *testing.T) {
	nodelab.RequireIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	g := startReplicatedGroup(t, ctx, groupSpec{app: "kvstore", image: nodelab.KVStoreImage, ports: "8080/http",
		prepare: func(ctx context.Context, c *nodelab.Containerd) error {
			tar := filepath.Join(t.TempDir(), "kvstore.tar")
			if err := nodelab.BuildKVStoreImage(ctx, tar); err != nil {
				return err
			}
			return nodelab.ImportImages(ctx, c.Socket(), tar)
		}})
	reps := make([]*kvReplica, len(g.pods))
	for i, p := range g.pods {
		netns := p.netns
		direct := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return netintercept.DialInNetns(ctx, netns, "tcp4", addr)
		}}
		viaPod := &http.Transport{}
		t.Cleanup(direct.CloseIdleConnections)
		t.Cleanup(viaPod.CloseIdleConnections)
		reps[i] = &kvReplica{labPod: p, viaPod: &http.Client{Transport: viaPod}, direct: &http.Client{Transport: direct}}
	}
	viaURL := func(r *kvReplica, path string) string { return "http://" + net.JoinHostPort(r.ip, "8080") + path }
	const directURL = "http://127.0.0.1:8080"

	retry(t, ctx, "PUT through kvstore-0", func() error {
		_, err := kvExpect(ctx, reps[0].viaPod, http.MethodPut, viaURL(reps[0], "/kv/greeting"), "hello", http.StatusNoContent)
		return err
	})
	// Every replica serves once its app is up and has applied the log (a
	// replica whose app container still starts refuses new clients with
	// 503 "rebuilding; try another replica").
	for _, r := range reps[1:] {
		retry(t, ctx, "GET through "+r.name, func() error {
			v, err := kvExpect(ctx, r.viaPod, http.MethodGet, viaURL(r, "/kv/greeting"), "", http.StatusOK)
			if err == nil && v != "hello" {
				return fmt.Errorf("GET greeting via %s = %q, want hello", r.name, v)
			}
			return err
		})
	}

	// Concurrent POST /incr through every replica, each client on one
	// keep-alive connection (MaxConnsPerHost 1) that is counted with httptrace.
	const clients, each = 6, 50
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	conns := make([]int, clients)
	start := time.Now()
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := reps[cl%3]
			tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
				if !info.Reused {
					conns[cl]++
				}
			}}
			cctx := httptrace.WithClientTrace(ctx, trace)
			for i := 0; i < each; i++ {
				v, err := kvExpect(cctx, c, http.MethodPost, viaURL(r, "/incr/counter"), "", http.StatusOK)
				if err == nil {
					_, err = strconv.ParseInt(v, 10, 64)
				}
				if err != nil {
					// An INCR whose outcome is unknown would make the expected
					// total unknown: fail instead of retrying.
					errs <- fmt.Errorf("client %d INCR %d via %s: %w", cl, i, r.name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d concurrent HTTP clients, %d POST /incr through the 3 replicas' pod IPs: %.0f req/s (informative)",
		clients, clients*each, float64(clients*each)/time.Since(start).Seconds())
	// Keep-alive through smr-cri: each client's requests shared one connection.
	for cl, n := range conns {
		if n != 1 {
			t.Errorf("client %d opened %d connections for %d requests, want 1 (keep-alive through smr-cri)", cl, n, each)
		}
	}

	want := strconv.Itoa(clients * each)
	waitFor(t, ctx, "counter="+want+" on every replica's app", func() (bool, string) {
		var got []string
		ok := true
		for _, r := range reps {
			v, err := kvExpect(ctx, r.direct, http.MethodGet, directURL+"/kv/counter", "", http.StatusOK)
			got = append(got, fmt.Sprintf("%s=%s(%v)", r.name, v, err))
			ok = ok && err == nil && v == want
		}
		return ok, strings.Join(got, " ")
	})
	for _, r := range reps {
		if v, err := kvExpect(ctx, r.direct, http.MethodGet, directURL+"/kv/greeting", "", http.StatusOK); err != nil || v != "hello" {
			t.Fatalf("%s app: greeting=%q (%v), want hello", r.name, v, err)
		}
		if v, err := kvExpect(ctx, r.direct, http.MethodGet, directURL+"/keys", "", http.StatusOK); err != nil || v != "counter\ngreeting\n" {
			t.Errorf("%s app: /keys=%q (%v), want counter and greeting", r.name, v, err)
		}
	}

	// A DELETE through kvstore-2 reaches every app too.
	if _, err := kvExpect(ctx, reps[2].viaPod, http.MethodDelete, viaURL(reps[2], "/kv/greeting"), "", http.StatusNoContent); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "greeting deleted on every replica's app", func() (bool, string) {
		var got []string
		ok := true
		for _, r := range reps {
			code, _, err := kvDo(ctx, r.direct, http.MethodGet, directURL+"/kv/greeting", "")
			got = append(got, fmt.Sprintf("%s=%d(%v)", r.name, code, err))
			ok = ok && err == nil && code == http.StatusNotFound
		}
		return ok, strings.Join(got, " ")
	})

	g.checkTraces(t, ctx, "smrtest.kvstore", 3*clients*each)
	t.Logf("%d ordering trace lines in serve's output", strings.Count(g.s.log(), "smr=commit"))
}
