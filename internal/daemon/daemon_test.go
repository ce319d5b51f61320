package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/freeport"
)

// counterApp is a tiny RESP server standing in for the pod's app in unit
// tests: INCR and GET on integer keys, +OK for anything else. It counts
// how many INCRs it executed, which is what a double apply would change.
type counterApp struct {
	ln   net.Listener
	mu   sync.Mutex
	vals map[string]int
	incr int
	from map[string]string // key -> host of the connection of its last INCR
	// flushes counts FLUSHALLs (repairs); drops is how many STALLs still
	// close their connection without an answer.
	flushes, drops int
}

// restartEmpty is the app's container restarting: its state is gone.
func (a *counterApp) restartEmpty() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.vals = map[string]int{}
}

func newCounterApp(t *testing.T) *counterApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return newCounterAppOn(t, ln)
}

func newCounterAppOn(t *testing.T, ln net.Listener) *counterApp {
	t.Helper()
	a := &counterApp{ln: ln, vals: map[string]int{}, from: map[string]string{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go a.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return a
}

func (a *counterApp) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		args, err := readCommand(r)
		if err != nil {
			return
		}
		a.mu.Lock()
		var reply string
		switch strings.ToUpper(args[0]) {
		case "INCR":
			a.incr++
			a.vals[args[1]]++
			a.from[args[1]], _, _ = net.SplitHostPort(c.RemoteAddr().String())
			reply = ":" + strconv.Itoa(a.vals[args[1]]) + "\r\n"
		case "GET":
			v := strconv.Itoa(a.vals[args[1]])
			reply = "$" + strconv.Itoa(len(v)) + "\r\n" + v + "\r\n"
		case "LPUSH": // stands for a request the app stalls on this request past the executor's AppTimeout (paused, throttled)
			if a.drops > 0 {
				a.drops--
				a.mu.Unlock()
				time.Sleep(2 * time.Second)
				return
			}
			reply = "+OK\r\n"
		case "FLUSHALL": // what a repair sends to empty the app
			a.flushes++
			a.vals = map[string]int{}
			reply = "+OK\r\n"
		case "HELLO": // go-redis falls back to RESP2
			reply = "-ERR unknown command 'HELLO'\r\n"
		default:
			reply = "+OK\r\n"
		}
		a.mu.Unlock()
		if _, err := io.WriteString(c, reply); err != nil {
			return
		}
	}
}

func (a *counterApp) counts() (incrs int, k int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.incr, a.vals["k"]
}

// readCommand reads one RESP array of bulk strings.
func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "*") {
		return nil, fmt.Errorf("not an array: %q", line)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("bad array header %q", line)
	}
	args := make([]string, n)
	for i := range args {
		hdr, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(hdr, "$")))
		if err != nil {
			return nil, fmt.Errorf("bad bulk header %q", hdr)
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		args[i] = string(b[:size])
	}
	return args, nil
}

type nopInterceptor struct{ cleanups int }

func (n *nopInterceptor) Apply(context.Context, string, netintercept.Spec) (netintercept.Result, error) {
	return netintercept.Result{}, nil
}
func (n *nopInterceptor) Cleanup(context.Context, string) (netintercept.Result, error) {
	n.cleanups++
	return netintercept.Result{}, nil
}

type appDialer struct{ addr string }

func (d appDialer) DialApp(ctx context.Context, _ int) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

// loopbackDaemon runs the daemon's wiring on loopback: the pod's client
// listener, raft listener and app are plain loopback sockets.
type loopbackDaemon struct {
	*Daemon
	clientAddr chan string
	ic         *nopInterceptor
}

func newLoopbackDaemon(t *testing.T, dataDir string, app *counterApp) *loopbackDaemon {
	t.Helper()
	return newLoopbackDaemonWithRuntime(t, dataDir, app, "")
}

func newLoopbackDaemonWithRuntime(t *testing.T, dataDir string, app *counterApp, runtimeEndpoint string) *loopbackDaemon {
	t.Helper()
	return newLoopbackDaemonWithConfig(t, dataDir, app, func(c *Config) { c.RuntimeEndpoint = runtimeEndpoint })
}

// newLoopbackDaemonWithConfig lets set change the config before New.
func newLoopbackDaemonWithConfig(t *testing.T, dataDir string, app *counterApp, set func(*Config)) *loopbackDaemon {
	t.Helper()
	ld := &loopbackDaemon{clientAddr: make(chan string, 4), ic: &nopInterceptor{}}
	cfg := Config{
		DataDir: dataDir, TickInterval: 10 * time.Millisecond, Intercept: ld.ic,
		OriginalPort: func(net.Conn) (int, error) { return 6379, nil },
		ListenApp: func(_, _ string) (net.Listener, error) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err == nil {
				ld.clientAddr <- ln.Addr().String()
			}
			return ln, err
		},
		ListenRaft: func(_, addr string) (net.Listener, error) { return net.Listen("tcp", addr) },
		Dialer:     func(string) replication.AppDialer { return appDialer{app.ln.Addr().String()} },
	}
	set(&cfg)
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ld.Daemon = d
	return ld
}

func onePod(sandbox string, raftPort int) podcontract.Pod {
	return podcontract.Pod{
		SandboxID: sandbox, UID: "u-" + sandbox,
		Meta: podcontract.Meta{Name: "redis-0", Namespace: "default",
			Labels: map[string]string{podcontract.LabelReplicate: podcontract.ValueReplicate},
			Annotations: map[string]string{podcontract.AnnotationPorts: "6379/resp",
				podcontract.AnnotationRaftPort: strconv.Itoa(raftPort),
				podcontract.AnnotationPeers:    "1=127.0.0.1:" + strconv.Itoa(raftPort)}},
		NetNSPath: "/var/run/netns/fake", IPs: []string{"127.0.0.1"},
	}
}

func incr(t *testing.T, ctx context.Context, addr string, n int) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer c.Close()
	for i := 0; i < n; {
		if err := c.Incr(ctx, "k").Err(); err != nil {
			if ctx.Err() != nil {
				t.Fatalf("INCR %d: %v", i, err)

			}
			time.Sleep(20 * time.Millisecond) // RESET not ordered yet, or election
			continue
		}
		i++
	}
}

// A daemon restart with the same sandbox (the app kept running) resumes at
// the app's position: no INCR is applied twice. A new sandbox (fresh app)
// gets the whole log replayed.
func TestDaemonRestartDoesNotReapply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dataDir := t.TempDir()
	app := newCounterApp(t)
	raftPort := freeport.PortT(t)

	d1 := newLoopbackDaemon(t, dataDir, app)
	if err := d1.AttachPod(ctx, onePod("sb1", raftPort)); err != nil {
		t.Fatal(err)
	}
	incr(t, ctx, <-d1.clientAddr, 20)
	if err := d1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d1.ic.cleanups != 0 {
		t.Fatal("daemon shutdown removed the pod's redirect")
	}

	d2 := newLoopbackDaemon(t, dataDir, app)
	if err := d2.AttachPod(ctx, onePod("sb1", raftPort)); err != nil {
		t.Fatal(err)
	}
	incr(t, ctx, <-d2.clientAddr, 1)
	if n, k := app.counts(); n != 21 || k != 21 {
		t.Fatalf("after restart: app executed %d INCRs, k=%d; want 21, 21", n, k)
	}
	// Stop of the sandbox (not of the daemon) removes the redirect.
	if err := d2.DetachPod(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if d2.ic.cleanups != 1 {
		t.Fatalf("detach ran %d cleanups, want 1", d2.ic.cleanups)
	}
	if err := d2.Close(ctx); err != nil {
		t.Fatal(err)
	}

	fresh := newCounterApp(t)
	d3 := newLoopbackDaemon(t, dataDir, fresh)
	defer d3.Close(ctx)
	if err := d3.AttachPod(ctx, onePod("sb2", raftPort)); err != nil {
		t.Fatal(err)
	}
	incr(t, ctx, <-d3.clientAddr, 1)
	if n, k := fresh.counts(); n != 22 || k != 22 {
		t.Fatalf("new sandbox: app executed %d INCRs, k=%d; want the 21 replayed + 1", n, k)
	}
}

func TestNewBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no data dir", Config{}, "data directory is required"},
		{"relative data dir", Config{DataDir: "var/lib"}, "must be an absolute path"},
		{"bad runtime endpoint", Config{DataDir: "/tmp/x", RuntimeEndpoint: "tcp://1.2.3.4:5"}, "only unix://"},
		{"bad listener port", Config{DataDir: "/tmp/x", ListenerPort: 70000}, "listener port"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want containing %q", err, tc.want)
			}
		})
	}
}

// A pod asking for Kubernetes membership fails to attach, with a clear
// error, when the daemon has no API server; a pod without IP too.
func TestAttachBadInput(t *testing.T) {
	ctx := context.Background()
	d := newLoopbackDaemon(t, t.TempDir(), newCounterApp(t))
	defer d.Close(ctx)
	pod := onePod("sb1", freeport.PortT(t))
	delete(pod.Annotations, podcontract.AnnotationPeers)
	pod.Annotations[podcontract.AnnotationMembership] = podcontract.MembershipKubernetes
	if err := d.AttachPod(ctx, pod); err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Fatalf("kubernetes membership without API server: %v", err)
	}
	pod = onePod("sb2", freeport.PortT(t))
	pod.IPs = nil
	if err := d.AttachPod(ctx, pod); err == nil || !strings.Contains(err.Error(), "no IP") {
		t.Fatalf("pod without IP: %v", err)
	}
	if got := d.Attached(); len(got) != 0 {
		t.Fatalf("failed attaches left %v attached", got)
	}
}

func (a *counterApp) flushCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.flushes
}
