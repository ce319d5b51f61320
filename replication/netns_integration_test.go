package replication

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/raft/memnet"
)

// The data path with the real kernel parts: three pod-like network
// namespaces, each with its own redis-server on 127.0.0.1:6379 inside, real
// iptables redirection (netintercept) to smr-cri's listener in the
// namespace, and clients on the host that connect to the pod IPs as they
// would through a Service. Raft runs on the in-memory network (raftcore's
// transport is tested by raftcore).

type labPod struct {
	name, path string
	ip         netip.Addr
}

var labOnce sync.Mutex

// newLabPod makes a namespace joined to the host by a veth pair with a /30
// of 198.19.64.0/18 (inside the test range 198.18.0.0/15) that no host
// interface uses yet.
func newLabPod(t *testing.T) labPod {
	t.Helper()
	labOnce.Lock()
	defer labOnce.Unlock()
	used, err := exec.Command("ip", "-4", "-o", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr show: %v: %s", err, used)
	}
	for k := os.Getpid() % 4096; k < os.Getpid()%4096+4096; k++ {
		n := k % 4096
		base := netip.AddrFrom4([4]byte{198, 19, byte(64 + n/64), byte(4 * (n % 64))})
		host, pod := base.Next(), base.Next().Next()
		name := fmt.Sprintf("smrr%d", n)
		if strings.Contains(string(used), " "+host.String()+"/") {
			continue
		}
		if _, err := os.Stat("/var/run/netns/" + name); err == nil {
			continue
		}
		hostIf, podIf := fmt.Sprintf("smrrh%d", n), fmt.Sprintf("smrrp%d", n)
		mustRun(t, "ip", "netns", "add", name)
		t.Cleanup(func() {
			_ = exec.Command("ip", "netns", "del", name).Run()
			_ = exec.Command("ip", "link", "del", hostIf).Run()
		})
		mustRun(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", podIf)
		mustRun(t, "ip", "link", "set", podIf, "netns", name)
		mustRun(t, "ip", "addr", "add", host.String()+"/30", "dev", hostIf)
		mustRun(t, "ip", "link", "set", hostIf, "up")
		mustRun(t, "ip", "-n", name, "addr", "add", pod.String()+"/30", "dev", podIf)
		mustRun(t, "ip", "-n", name, "link", "set", podIf, "up")
		mustRun(t, "ip", "-n", name, "link", "set", "lo", "up")
		return labPod{name: name, path: "/var/run/netns/" + name, ip: pod}
	}
	t.Fatal("no free /30 left in 198.19.64.0/18")
	return labPod{}
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// startRedisIn runs redis-server on 127.0.0.1:6379 inside the namespace.
func startRedisIn(t *testing.T, p labPod) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("ip", "netns", "exec", p.name, "redis-server", "--port", "6379", "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", dir+"/redis.log")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server in %s: %v", p.name, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, "redis-server in "+p.name, func() bool {
		c, err := NetnsDialer{Path: p.path}.DialApp(context.Background(), 6379)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func TestManagerRealNetnsRedis(t *testing.T) {
	requireIntegration(t)
	if os.Geteuid() != 0 {
		t.Fatal("SMR_INTEGRATION=1 is set but the test is not running as root")
	}
	for _, bin := range []string{"ip", "redis-server", "iptables-nft-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("integration prerequisite missing (hack/install-deps.sh installs it): %v", err)
		}
	}
	var pods []labPod
	for range 3 {
		p := newLabPod(t)
		startRedisIn(t, p)
		pods = append(pods, p)
	}
	var peers []string
	for i, p := range pods {
		peers = append(peers, fmt.Sprintf("%d=%s:7480", i+1, p.ip))
	}
	env := &testEnv{network: memnet.New(), dir: t.TempDir()}
	t.Cleanup(env.network.Close) // after the managers close
	m := env.manager(t, &netintercept.Interceptor{})
	// The real kernel parts: listener in the netns, dialer in the netns, SO_ORIGINAL_DST.
	m.cfg.Listen = func(netns, addr string) (net.Listener, error) { return netintercept.ListenInNetns(netns, "tcp", addr) }
	m.cfg.Dialer = func(netns string) AppDialer { return NetnsDialer{Path: netns} }
	m.cfg.OriginalPort = OriginalPort
	ctx := context.Background()
	for i, p := range pods {
		ref := podcontract.Pod{SandboxID: p.name, NetNSPath: p.path, IPs: []string{p.ip.String()},
			Meta: podcontract.Meta{Name: fmt.Sprintf("redis-%d", i), Namespace: "default",
				Labels:      map[string]string{podcontract.LabelReplicate: "true"},
				Annotations: map[string]string{podcontract.AnnotationPorts: "6379/resp", podcontract.AnnotationPeers: strings.Join(peers, ",")}}}
		if err := m.Attach(ctx, ref); err != nil {
			t.Fatalf("attach %s: %v", p.name, err)
		}
	}
	// Clients on the host reach the pods' IPs; the redirect hands them to smr-cri.
	const perPod, incrs = 3, 30
	var wg sync.WaitGroup
	for _, p := range pods {
		c := redis.NewClient(&redis.Options{Addr: net.JoinHostPort(p.ip.String(), "6379"), PoolSize: perPod})
		defer c.Close()
		for range perPod {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range incrs {
					if err := c.Incr(ctx, "counter").Err(); err != nil {
						t.Errorf("INCR via %s: %v", p.ip, err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	tx := redis.NewClient(&redis.Options{Addr: net.JoinHostPort(pods[1].ip.String(), "6379"), DB: 3})
	defer tx.Close()
	if _, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "a", "1", 0)
		p.Incr(ctx, "a")
		return nil
	}); err != nil {
		t.Fatalf("MULTI/EXEC through pod 2: %v", err)
	}
	// Compare every replica's redis directly (inside its netns, bypassing interception).
	want := int64(len(pods) * perPod * incrs)
	for _, p := range pods {
		waitFor(t, "redis in "+p.name+" to hold every write", func() bool {
			d0 := directRedis(t, p, 0)
			d3 := directRedis(t, p, 3)
			n, _ := d0.Get(ctx, "counter").Int64()
			a, _ := d3.Get(ctx, "a").Int64()
			return n == want && a == 2
		})
	}
	for _, p := range pods {
		if err := m.Detach(ctx, p.name); err != nil {
			t.Errorf("detach %s: %v", p.name, err)
		}
	}
}

func directRedis(t *testing.T, p labPod, db int) *redis.Client {
	c := redis.NewClient(&redis.Options{DB: db, Addr: "127.0.0.1:6379",
		Dialer: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return NetnsDialer{Path: p.path}.DialApp(ctx, 6379)
		}})
	t.Cleanup(func() { _ = c.Close() })
	return c
}
