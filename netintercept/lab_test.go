package netintercept

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// This file holds the real-kernel lab used by the integration tests and benchmarks: network
// namespaces made with `ip netns add`, joined to the host by veth pairs addressed in
// 198.18.0.0/15.

func requireIntegration(t testing.TB) {
	t.Helper()
	testcheck.SkipUnlessIntegration(t, "root and a real kernel")
	if os.Geteuid() != 0 {
		t.Fatal("SMR_INTEGRATION=1 is set but the test is not running as root")
	}
	for _, bin := range []string{"ip", "iptables-nft-save", "iptables-nft-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("integration prerequisite missing (hack/install-deps.sh installs it): %v", err)
		}
	}
}

// podNet is one pod-like namespace: pod address on its veth end, and two host-side addresses on
// the other: node (a kubelet probe source) and client (an ordinary client).
type podNet struct {
	name, path   string
	hostIf       string
	node, client netip.Addr
	pod          netip.Addr
}

var (
	labMu   sync.Mutex
	labNext = os.Getpid() % 1024
)

// run runs a command and fails the test with its output if it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newPodNet makes a namespace and a veth pair with a /29 of 198.18.200.0-198.18.231.255 that no
// interface on the host uses yet; t.Cleanup removes both.
func newPodNet(t testing.TB) *podNet {
	t.Helper()
	labMu.Lock()
	defer labMu.Unlock()
	used := run(t, "ip", "-4", "-o", "addr", "show") + run(t, "ip", "-o", "link", "show")
	for tries := 0; tries < 1024; tries++ {
		k := labNext % 1024
		labNext++
		base := netip.AddrFrom4([4]byte{198, 18, byte(200 + k/32), byte(8 * (k % 32))})
		hostIf := fmt.Sprintf("smrh%d", k)
		if strings.Contains(used, " "+base.Next().String()+"/") || strings.Contains(used, " "+hostIf+"@") {
			continue
		}
		name := fmt.Sprintf("smrt%d-%d", os.Getpid()%100000, k)
		if _, err := os.Stat("/var/run/netns/" + name); err == nil {
			continue
		}
		pn := &podNet{
			name:   name,
			path:   "/var/run/netns/" + name,
			hostIf: hostIf,
			node:   base.Next(),
			pod:    base.Next().Next(),
			client: base.Next().Next().Next(),
		}
		podIf := fmt.Sprintf("smrp%d", k)
		run(t, "ip", "netns", "add", name)
		t.Cleanup(func() {
			exec.Command("ip", "netns", "del", name).Run()
			exec.Command("ip", "link", "del", pn.hostIf).Run() // gone with the netns normally
		})
		run(t, "ip", "link", "add", pn.hostIf, "type", "veth", "peer", "name", podIf)
		run(t, "ip", "link", "set", podIf, "netns", name)
		run(t, "ip", "addr", "add", pn.node.String()+"/29", "dev", pn.hostIf)
		run(t, "ip", "addr", "add", pn.client.String()+"/29", "dev", pn.hostIf)
		run(t, "ip", "link", "set", pn.hostIf, "up")
		run(t, "ip", "-n", name, "addr", "add", pn.pod.String()+"/29", "dev", podIf)
		run(t, "ip", "-n", name, "link", "set", podIf, "up")
		run(t, "ip", "-n", name, "link", "set", "lo", "up")
		return pn
	}
	t.Fatal("no free /29 left in 198.18.200.0/19")
	return nil
}

// save is the namespace's iptables-save output of the given backend, without its comment lines
// (they hold a timestamp) and with chain packet counters zeroed (they count the test's traffic).
func (pn *podNet) save(t testing.TB, b Backend) string {
	t.Helper()
	out, err := NetnsRunner{}.Run(context.Background(), Cmd{Netns: pn.path, Name: b.saveCmd()})
	if err != nil {
		t.Fatalf("save: %v", err)
	}
	var keep []string
	for l := range strings.Lines(string(out)) {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, counters.ReplaceAllString(l, "$1 [0:0]"))
		}
	}
	return strings.Join(keep, "")
}

var counters = regexp.MustCompile(`^(:\S+ \S+) \[\d+:\d+\]`)

// acceptLoop hands every connection accepted on l to handle, on its own goroutine, until the
// test ends.
func acceptLoop(t testing.TB, l net.Listener, handle func(c *net.TCPConn)) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
}

// serve answers every line it reads on l with name, the original destination of the
// connection, and the line: "name dst line".
func serve(t testing.TB, l net.Listener, name string) {
	acceptLoop(t, l, func(c *net.TCPConn) {
		dst, err := OriginalDst(c)
		dstStr := dst.String()
		if err != nil {
			dstStr = "none"
		}
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s %s", name, dstStr, line)
		}
	})
}

// restore loads rules of the test's own into the namespace with the given restore program.
func (pn *podNet) restore(t testing.TB, program, rules string) {
	t.Helper()
	if _, err := (NetnsRunner{}).Run(context.Background(), Cmd{Netns: pn.path, Name: program, Args: []string{"--noflush"}, Stdin: []byte(rules)}); err != nil {
		t.Fatalf("load test rules: %v", err)
	}
}

// serveIn starts a line server named name on port inside the namespace. It listens dual-stack,
// as smr-cri does, so OriginalDst sees IPv4 clients on an IPv6 socket (v4-mapped).
func (pn *podNet) serveIn(t testing.TB, port uint16, name string) {
	t.Helper()
	l, err := ListenInNetns(pn.path, "tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	serve(t, l, name)
}

// ask sends one line over c and returns the answer's first word (which server answered) and
// its second (the original destination that server saw).
func ask(t testing.TB, c net.Conn) (server, dst string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	f := strings.Fields(line)
	if len(f) != 3 {
		t.Fatalf("bad answer %q", line)
	}
	return f[0], f[1]
}

// dialFrom connects from the host, from local address src, to dst.
func dialFrom(t testing.TB, src netip.Addr, dst netip.AddrPort) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp4", dst.String())
	if err != nil {
		t.Fatalf("dial %s from %s: %v", dst, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// whoAnswers dials dst from src and reports which server answered and the destination it saw.
func whoAnswers(t testing.TB, src netip.Addr, dst netip.AddrPort) (string, string) {
	t.Helper()
	return ask(t, dialFrom(t, src, dst))
}

// expectServer checks that a connection from src to dst is answered by the server named want.
func expectServer(t testing.TB, src netip.Addr, dst netip.AddrPort, want string) {
	t.Helper()
	if got, _ := whoAnswers(t, src, dst); got != want {
		t.Errorf("%s -> %s answered by %s, want %s", src, dst, got, want)
	}
}

// whoAnswersInside dials addr from inside the namespace.
func (pn *podNet) whoAnswersInside(t testing.TB, addr string) (string, string) {
	t.Helper()
	c, err := DialInNetns(context.Background(), pn.path, "tcp", addr)
	if err != nil {
		t.Fatalf("dial inside: %v", err)
	}
	defer c.Close()
	return ask(t, c)
}
