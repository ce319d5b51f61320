package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/podcontract"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
)

// Addresses of the probe test's pod network (a /24 of 198.18.0.0/15 no
// other test uses): the node side of the veth has the gateway .1 (the
// primary address, what the node's route to the pod picks) and a second
// address .3; the pod is .2.
const (
	probeNetns   = "smr-probe-it"
	probeHostDev = "smrprobe0"
	probeGateway = "198.18.213.1"
	probeOther   = "198.18.213.3"
	probePodIP   = "198.18.213.2"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// probePodNetwork makes a pod-like netns behind a veth whose node side is
// its default gateway, as a bridge or ptp CNI does, and removes it after.
func probePodNetwork(t *testing.T) string {
	t.Helper()
	_ = exec.Command("ip", "netns", "del", probeNetns).Run() // left by a killed run
	_ = exec.Command("ip", "link", "del", probeHostDev).Run()
	ipCmd(t, "netns", "add", probeNetns)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", probeHostDev).Run()
		_ = exec.Command("ip", "netns", "del", probeNetns).Run()
	})
	ipCmd(t, "link", "add", probeHostDev, "type", "veth", "peer", "name", "eth0", "netns", probeNetns)
	ipCmd(t, "addr", "add", probeGateway+"/24", "dev", probeHostDev)
	ipCmd(t, "addr", "add", probeOther+"/24", "dev", probeHostDev)
	ipCmd(t, "link", "set", probeHostDev, "up")
	ipCmd(t, "-n", probeNetns, "addr", "add", probePodIP+"/24", "dev", "eth0")
	ipCmd(t, "-n", probeNetns, "link", "set", "lo", "up")
	ipCmd(t, "-n", probeNetns, "link", "set", "eth0", "up")
	ipCmd(t, "-n", probeNetns, "route", "add", "default", "via", probeGateway)
	return "/var/run/netns/" + probeNetns
}

// With --probe-source auto, a connection to the pod's service port from the
// detected node address (the pod's gateway) reaches the app directly, while
// one from another node address goes through the ordered stream: the real
// daemon, iptables redirect, raft member and executor in a real netns.
func TestIntegrationProbeSourceBypassesRedirect(t *testing.T) {
	nodelab.RequireIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	netnsPath := probePodNetwork(t)

	found, err := detectProbeSources(netnsPath)
	if err != nil || !slices.Equal(found, []netip.Addr{netip.MustParseAddr(probeGateway)}) {
		t.Fatalf("detectProbeSources = %v, %v; want [%s] (gateway and the node's route source)", found, err, probeGateway)
	}

	appLn, err := netintercept.ListenInNetns(netnsPath, "tcp", "0.0.0.0:6379")
	if err != nil {
		t.Fatal(err)
	}
	app := newCounterAppOn(t, appLn)
	trace := &lockedBuffer{}
	tracer := replication.NewTracer(trace)
	defer tracer.Close()
	d, err := New(Config{DataDir: t.TempDir(), TickInterval: 10 * time.Millisecond, Trace: tracer,
		ProbeSources: ProbeSources{Auto: true}})
	if err != nil {
		t.Fatal(err)
	}
	pod := podcontract.Pod{
		SandboxID: "probe-sandbox", UID: "u-probe",
		Meta: podcontract.Meta{Name: "redis-0", Namespace: "default",
			Labels: map[string]string{podcontract.LabelReplicate: podcontract.ValueReplicate},
			Annotations: map[string]string{podcontract.AnnotationPorts: "6379/resp", podcontract.AnnotationRaftPort: "7480",
				podcontract.AnnotationPeers: "1=" + probePodIP + ":7480"}},
		NetNSPath: netnsPath, IPs: []string{probePodIP},
	}
	if err := d.AttachPod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := d.DetachPod(context.Background(), pod.SandboxID); err != nil {
			t.Errorf("detach: %v", err)
		}
		_ = d.Close(context.Background())
	}()

	clientFrom := func(src string) *redis.Client {
		dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
		return redis.NewClient(&redis.Options{Addr: net.JoinHostPort(probePodIP, "6379"), Protocol: 2,
			DisableIdentity: true, MaxRetries: -1, Dialer: dialer.DialContext})
	}
	for _, tc := range []struct {
		src, key, appSees string
		ordered           bool
	}{
		// Redirected: the executor's connection from 127.0.0.1 inside the pod runs it.
		{src: probeOther, key: "client", appSees: "127.0.0.1", ordered: true},
		// Bypass: the app sees the probe's own connection.
		{src: probeGateway, key: "probe", appSees: probeGateway, ordered: false},
	} {
		c := clientFrom(tc.src)
		waitFor(t, ctx, "INCR "+tc.key+" from "+tc.src, func() (bool, string) {
			err := c.Incr(ctx, tc.key).Err() // retried through the first election
			return err == nil, fmt.Sprint(err)
		})
		_ = c.Close()
		app.mu.Lock()
		got := app.from[tc.key]
		app.mu.Unlock()
		if got != tc.appSees {
			t.Errorf("INCR %s from %s: the app saw a connection from %q, want %q (ordered: %v)", tc.key, tc.src, got, tc.appSees, tc.ordered)
		}
	}
	tracer.Flush()
	if n := strings.Count(trace.String(), `op="INCR"`); n != 1 {
		t.Errorf("%d INCR trace lines, want 1 (only the redirected client's INCR is ordered):\n%s", n, trace.String())
	}
}
