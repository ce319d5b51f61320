package netintercept

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

const (
	svcPort      = 6379
	listenerPort = 15001
	raftPort     = 7946
)

// The whole life of one pod's interception, against the real kernel.
func TestIntegrationRedirect(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	pn := newPodNet(t)
	pn.serveIn(t, svcPort, "app")
	pn.serveIn(t, listenerPort, "smr")
	pn.serveIn(t, raftPort, "raft")
	svc := netip.AddrPortFrom(pn.pod, svcPort)

	before, beforeLegacy := pn.save(t, BackendNFT), pn.save(t, BackendLegacy)
	ic := &Interceptor{}
	spec := Spec{
		ServicePorts: []uint16{svcPort},
		ListenerPort: listenerPort,
		ExcludePorts: []uint16{raftPort},
		ProbeSources: []netip.Addr{pn.node},
		Mark:         0x4000,
	}
	res, err := ic.Apply(ctx, pn.path, spec)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if res.Backend != BackendNFT || !res.Changed {
		t.Fatalf("Apply result %+v, want a change with nf_tables", res)
	}
	applied := pn.save(t, BackendNFT)

	checks := []struct {
		name, wantServer, wantDst string
		who                       func() (string, string)
	}{
		{"client to service port reaches the listener", "smr", svc.String(),
			func() (string, string) { return whoAnswers(t, pn.client, svc) }},
		{"probe from the node address reaches the app", "app", svc.String(),
			func() (string, string) { return whoAnswers(t, pn.node, svc) }},
		{"raft port is not redirected", "raft", netip.AddrPortFrom(pn.pod, raftPort).String(),
			func() (string, string) { return whoAnswers(t, pn.client, netip.AddrPortFrom(pn.pod, raftPort)) }},
		{"127.0.0.1 from inside reaches the app", "app", fmt.Sprintf("127.0.0.1:%d", svcPort),
			func() (string, string) { return pn.whoAnswersInside(t, fmt.Sprintf("127.0.0.1:%d", svcPort)) }},
		{"pod address from inside reaches the app", "app", svc.String(),
			func() (string, string) { return pn.whoAnswersInside(t, svc.String()) }},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			server, dst := c.who()
			if server != c.wantServer || dst != c.wantDst {
				t.Errorf("answered by %s seeing destination %s, want %s seeing %s", server, dst, c.wantServer, c.wantDst)
			}
		})
	}

	t.Run("re-apply is a no-op", func(t *testing.T) {
		res, err := ic.Apply(ctx, pn.path, spec)
		if err != nil {
			t.Fatalf("Apply again: %v", err)
		}
		if res.Changed {
			t.Errorf("second Apply changed something:\n%s", res.Script)
		}
		if got := pn.save(t, BackendNFT); got != applied {
			t.Errorf("iptables-save changed by re-apply:\n%s\nwas:\n%s", got, applied)
		}
	})

	t.Run("changed spec replaces the rules in place", func(t *testing.T) {
		other := spec
		other.ServicePorts = []uint16{svcPort, 8080}
		if _, err := ic.Apply(ctx, pn.path, other); err != nil {
			t.Fatalf("Apply changed spec: %v", err)
		}
		if _, err := ic.Apply(ctx, pn.path, spec); err != nil {
			t.Fatalf("Apply original spec: %v", err)
		}
		if got := pn.save(t, BackendNFT); got != applied {
			t.Errorf("iptables-save after changing back:\n%s\nwant:\n%s", got, applied)
		}
	})

	t.Run("cleanup restores iptables-save exactly", func(t *testing.T) {
		res, err := ic.Cleanup(ctx, pn.path)
		if err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
		if !res.Changed {
			t.Errorf("Cleanup removed nothing")
		}
		if got := pn.save(t, BackendNFT); got != before {
			t.Errorf("iptables-save after cleanup:\n%q\nbefore apply:\n%q", got, before)
		}
		if got := pn.save(t, BackendLegacy); got != beforeLegacy {
			t.Errorf("iptables-legacy-save after cleanup:\n%q\nbefore apply:\n%q", got, beforeLegacy)
		}
		expectServer(t, pn.client, svc, "app")
		res, err = ic.Cleanup(ctx, pn.path)
		if err != nil || res.Changed {
			t.Errorf("second Cleanup = %+v, %v; want no change", res, err)
		}
	})
}

// Rules that others put in the namespace survive apply and cleanup untouched, and a stray
// second jump (an interrupted older version, a manual edit) is repaired.
func TestIntegrationForeignRules(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	pn := newPodNet(t)
	pn.serveIn(t, svcPort, "app")
	pn.serveIn(t, listenerPort, "smr")
	foreign := "*nat\n:CNI-HOSTPORT - [0:0]\n-A PREROUTING -p udp -j CNI-HOSTPORT\n-A CNI-HOSTPORT -p udp -m udp --dport 53 -j RETURN\nCOMMIT\n" +
		"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p icmp -j ACCEPT\nCOMMIT\n"
	pn.restore(t, "iptables-nft-restore", foreign)
	before := pn.save(t, BackendNFT)
	ic := &Interceptor{}
	spec := Spec{ServicePorts: []uint16{svcPort}, ListenerPort: listenerPort}
	if _, err := ic.Apply(ctx, pn.path, spec); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	applied := pn.save(t, BackendNFT)
	// A second jump, appended behind our back.
	dup := "*nat\n-A PREROUTING -p tcp -j SMR_PREROUTING\nCOMMIT\n"
	pn.restore(t, "iptables-nft-restore", dup)
	res, err := ic.Apply(ctx, pn.path, spec)
	if err != nil || !res.Changed {
		t.Fatalf("Apply over a duplicate jump = %+v, %v; want a repair", res, err)
	}
	if got := pn.save(t, BackendNFT); got != applied {
		t.Errorf("after repair:\n%s\nwant:\n%s", got, applied)
	}
	expectServer(t, pn.client, netip.AddrPortFrom(pn.pod, svcPort), "smr")
	if _, err := ic.Cleanup(ctx, pn.path); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if got := pn.save(t, BackendNFT); got != before {
		t.Errorf("iptables-save after cleanup:\n%s\nbefore apply:\n%s", got, before)
	}
}

// Two pods' rules live in their own namespaces: applying, using and removing one never changes
// the other.
func TestIntegrationTwoNamespaces(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	a, b := newPodNet(t), newPodNet(t)
	for _, pn := range []*podNet{a, b} {
		pn.serveIn(t, svcPort, "app")
		pn.serveIn(t, 8080, "web")
		pn.serveIn(t, listenerPort, "smr")
		pn.serveIn(t, listenerPort+1, "smr2")
	}
	ic := &Interceptor{}
	beforeA := a.save(t, BackendNFT)
	if _, err := ic.Apply(ctx, a.path, Spec{ServicePorts: []uint16{svcPort}, ListenerPort: listenerPort}); err != nil {
		t.Fatalf("Apply a: %v", err)
	}
	if _, err := ic.Apply(ctx, b.path, Spec{ServicePorts: []uint16{8080}, ListenerPort: listenerPort + 1}); err != nil {
		t.Fatalf("Apply b: %v", err)
	}
	appliedB := b.save(t, BackendNFT)
	want := []struct {
		pn     *podNet
		port   uint16
		server string
	}{{a, svcPort, "smr"}, {a, 8080, "web"}, {b, svcPort, "app"}, {b, 8080, "smr2"}}
	for _, w := range want {
		expectServer(t, w.pn.client, netip.AddrPortFrom(w.pn.pod, w.port), w.server)
	}
	if _, err := ic.Cleanup(ctx, a.path); err != nil {
		t.Fatalf("Cleanup a: %v", err)
	}
	if got := a.save(t, BackendNFT); got != beforeA {
		t.Errorf("a after cleanup:\n%s\nwant:\n%s", got, beforeA)
	}
	if got := b.save(t, BackendNFT); got != appliedB {
		t.Errorf("b changed by a's cleanup:\n%s\nwant:\n%s", got, appliedB)
	}
	expectServer(t, b.client, netip.AddrPortFrom(b.pod, 8080), "smr2")
}

// A namespace whose rules are legacy iptables is handled with the legacy backend.
func TestIntegrationLegacyBackend(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	pn := newPodNet(t)
	pn.serveIn(t, svcPort, "app")
	pn.serveIn(t, listenerPort, "smr")
	foreign := "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p icmp -j ACCEPT\nCOMMIT\n"
	pn.restore(t, "iptables-legacy-restore", foreign)
	ic := &Interceptor{}
	spec := Spec{ServicePorts: []uint16{svcPort}, ListenerPort: listenerPort, ProbeSources: []netip.Addr{pn.node}}
	res, err := ic.Apply(ctx, pn.path, spec)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if res.Backend != BackendLegacy {
		t.Fatalf("backend %s, want legacy", res.Backend)
	}
	expectServer(t, pn.client, netip.AddrPortFrom(pn.pod, svcPort), "smr")
	expectServer(t, pn.node, netip.AddrPortFrom(pn.pod, svcPort), "app")
	if res, err := ic.Apply(ctx, pn.path, spec); err != nil || res.Changed {
		t.Errorf("re-apply = %+v, %v; want no change", res, err)
	}
	if _, err := ic.Cleanup(ctx, pn.path); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if o := table(parseSave(pn.save(t, BackendLegacy)), natTable).owned(); len(o.chains)+len(o.jumps)+len(o.rules) > 0 {
		t.Errorf("legacy rules left after cleanup: %+v", o)
	}
	if nft := pn.save(t, BackendNFT); nft != "" {
		t.Errorf("nf_tables rules appeared in a legacy namespace:\n%s", nft)
	}
}

// Bad input against the real system: each gets a clear error and changes nothing.
func TestIntegrationBadInput(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	pn := newPodNet(t)
	ic := &Interceptor{}
	good := Spec{ServicePorts: []uint16{svcPort}, ListenerPort: listenerPort}
	notNs := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(notNs, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		path      string
		spec      Spec
		emptyPATH bool
		wantIs    error
	}{
		{"missing netns path", "/var/run/netns/smrt-does-not-exist", good, false, ErrNotNetns},
		{"regular file as netns", notNs, good, false, ErrNotNetns},
		{"listener port equal to service port", pn.path, Spec{ServicePorts: []uint16{svcPort}, ListenerPort: svcPort}, false, ErrInvalidSpec},
		{"port zero", pn.path, Spec{ServicePorts: []uint16{0}, ListenerPort: listenerPort}, false, ErrInvalidSpec},
		{"no iptables backend", pn.path, good, true, ErrNoBackend},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.emptyPATH {
				t.Setenv("PATH", t.TempDir())
			}
			_, err := ic.Apply(ctx, tc.path, tc.spec)
			if !errors.Is(err, tc.wantIs) {
				t.Fatalf("Apply error = %v, want %v", err, tc.wantIs)
			}
			t.Logf("error: %v", err)
		})
	}
	if got := pn.save(t, BackendNFT); got != "" {
		t.Errorf("bad input left rules:\n%s", got)
	}
}

// Traffic carrying smr-cri's mark (set here by a mangle rule, as anything cooperating with
// smr-cri would) is not redirected.
func TestIntegrationMarkedTrafficBypasses(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	pn := newPodNet(t)
	pn.serveIn(t, svcPort, "app")
	pn.serveIn(t, listenerPort, "smr")
	if _, err := (&Interceptor{}).Apply(ctx, pn.path, Spec{ServicePorts: []uint16{svcPort}, ListenerPort: listenerPort, Mark: 0x4000}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	svc := netip.AddrPortFrom(pn.pod, svcPort)
	if server, _ := whoAnswers(t, pn.client, svc); server != "smr" {
		t.Fatalf("unmarked traffic answered by %s, want smr", server)
	}
	mark := fmt.Sprintf("*mangle\n-A PREROUTING -s %s/32 -p tcp -j MARK --set-xmark 0x4000/0x4000\nCOMMIT\n", pn.client)
	pn.restore(t, "iptables-nft-restore", mark)
	expectServer(t, pn.client, svc, "app")
	expectServer(t, pn.node, svc, "smr")
}

// After many concurrent listens and dials inside a pod netns, every thread of the process is
// back in the namespace it started in.
func TestIntegrationThreadsLeaveNoNamespace(t *testing.T) {
	requireIntegration(t)
	pn := newPodNet(t)
	pn.serveIn(t, svcPort, "app")
	home, err := os.Readlink(fmt.Sprintf("/proc/self/task/%d/ns/net", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			l, err := ListenInNetns(pn.path, "tcp4", "127.0.0.1:0")
			if err != nil {
				errs <- err
				return
			}
			l.Close()
			c, err := DialInNetns(context.Background(), pn.path, "tcp4", fmt.Sprintf("127.0.0.1:%d", svcPort))
			if err != nil {
				errs <- err
				return
			}
			c.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("in netns: %v", err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net")
		if err != nil {
			continue // the thread exited meanwhile
		}
		if ns != home {
			t.Errorf("thread %s is in %s, want %s", task.Name(), ns, home)
		}
	}
}

// OriginalDst reads IPv6 connections too (IP6T_SO_ORIGINAL_DST). smr-cri builds IPv4 rules
// only, so the test redirects with an ip6tables rule of its own.
func TestIntegrationOriginalDstIPv6(t *testing.T) {
	requireIntegration(t)
	pn := newPodNet(t)
	l, err := ListenInNetns(pn.path, "tcp6", fmt.Sprintf("[::1]:%d", listenerPort))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	serve(t, l, "smr")
	rule := fmt.Sprintf("*nat\n-A OUTPUT -d ::1/128 -p tcp -m tcp --dport %d -j REDIRECT --to-ports %d\nCOMMIT\n", svcPort, listenerPort)
	pn.restore(t, "ip6tables-nft-restore", rule)
	server, dst := pn.whoAnswersInside(t, fmt.Sprintf("[::1]:%d", svcPort))
	if want := fmt.Sprintf("[::1]:%d", svcPort); server != "smr" || dst != want {
		t.Errorf("answered by %s seeing %s, want smr seeing %s", server, dst, want)
	}
}

// Concurrent Apply calls on one Interceptor (e.g. a retried RunPodSandbox racing the first)
// end with exactly the rules of one Apply.
func TestIntegrationConcurrentApply(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	pn := newPodNet(t)
	ic := &Interceptor{}
	spec := Spec{ServicePorts: []uint16{svcPort}, ListenerPort: listenerPort}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := ic.Apply(ctx, pn.path, spec); err != nil {
				t.Errorf("Apply: %v", err)
			}
		})
	}
	wg.Wait()
	rs, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	o := table(parseSave(pn.save(t, BackendNFT)), natTable).owned()
	if got, want := append(o.jumps, o.rules...), rs.Lines(); !slices.Equal(got, want) {
		t.Errorf("rules after concurrent Apply:\n%q\nwant:\n%q", got, want)
	}
}
