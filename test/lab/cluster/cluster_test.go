package cluster

import (
	"bufio"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNodes(t *testing.T) {
	tests := []struct {
		count   int
		wantErr bool
		last    Node
	}{
		{count: 0, wantErr: true},
		{count: -1, wantErr: true},
		{count: MaxNodes + 1, wantErr: true},
		{count: 1, last: Node{Index: 1, Name: "smr-node1", IP: "198.18.0.11", PodSubnet: "198.19.1.0/24", HostVeth: "smr-veth1"}},
		{count: 3, last: Node{Index: 3, Name: "smr-node3", IP: "198.18.0.13", PodSubnet: "198.19.3.0/24", HostVeth: "smr-veth3"}},
	}
	for _, tc := range tests {
		nodes, err := Nodes(tc.count)
		if (err != nil) != tc.wantErr {
			t.Fatalf("Nodes(%d) error = %v, wantErr %v", tc.count, err, tc.wantErr)
		}
		if err != nil {
			continue
		}
		if len(nodes) != tc.count || nodes[len(nodes)-1] != tc.last {
			t.Fatalf("Nodes(%d) = %+v, want last %+v", tc.count, nodes, tc.last)
		}
		if len(nodes[0].HostVeth) > 15 {
			t.Fatalf("link name %q longer than IFNAMSIZ-1", nodes[0].HostVeth)
		}
	}
}

func TestResolveRejectsBadConfig(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"root as state dir", Config{RepoRoot: root, Dir: "/"}, "too short"},
		{"too many nodes", Config{RepoRoot: root, Dir: filepath.Join(root, "c"), Nodes: 10}, "out of range"},
		{"socket path too long", Config{RepoRoot: root, Dir: filepath.Join(root, strings.Repeat("x", 80))}, "too long"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.Resolve()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Resolve() error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestResolveDefaults(t *testing.T) {
	root := t.TempDir()
	t.Setenv("SMR_CLUSTER_DIR", "")
	t.Setenv("SMR_CACHE", filepath.Join(root, "cache"))
	c, err := Config{RepoRoot: root}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Dir: filepath.Join(root, "_out", "cluster"), Nodes: 3, RepoRoot: root,
		KubeBin: filepath.Join(root, "cache", "kube-"+KubeVersion), Kubelet: filepath.Join(root, "cache", "bin", "kubelet"),
		SmrCRI: filepath.Join(root, "bin", "smr-cri"), Etcd: "/usr/bin/etcd",
	}
	if c != want {
		t.Fatalf("Resolve() = %+v, want %+v", c, want)
	}
}

// Every pod subnet must be routed via its node from the host and from every other node, and never
// from the node that owns it (its CNI bridge holds that subnet).
func TestNetworkStepsRoutes(t *testing.T) {
	nodes, _ := Nodes(3)
	var routes []string
	for _, s := range networkSteps(nodes) {
		if i := slices.Index(s, "route"); i >= 0 {
			routes = append(routes, strings.Join(s, " "))
		}
	}
	want := []string{
		"ip -n smr-node1 route replace 198.18.128.0/20 via 198.18.0.1 dev eth0",
		"ip -n smr-node1 route replace 198.19.2.0/24 via 198.18.0.12 dev eth0",
		"ip -n smr-node1 route replace 198.19.3.0/24 via 198.18.0.13 dev eth0",
		"ip -n smr-node2 route replace 198.18.128.0/20 via 198.18.0.1 dev eth0",
		"ip -n smr-node2 route replace 198.19.1.0/24 via 198.18.0.11 dev eth0",
		"ip -n smr-node2 route replace 198.19.3.0/24 via 198.18.0.13 dev eth0",
		"ip -n smr-node3 route replace 198.18.128.0/20 via 198.18.0.1 dev eth0",
		"ip -n smr-node3 route replace 198.19.1.0/24 via 198.18.0.11 dev eth0",
		"ip -n smr-node3 route replace 198.19.2.0/24 via 198.18.0.12 dev eth0",
		"ip route replace 198.19.1.0/24 via 198.18.0.11 dev smr-br0",
		"ip route replace 198.19.2.0/24 via 198.18.0.12 dev smr-br0",
		"ip route replace 198.19.3.0/24 via 198.18.0.13 dev smr-br0",
	}
	slices.Sort(routes)
	if !slices.Equal(routes, want) {
		t.Fatalf("routes:\n%s\nwant:\n%s", strings.Join(routes, "\n"), strings.Join(want, "\n"))
	}
}

// The PKI must chain to the CA, give the API server the SANs clients dial, and give each
// identity the user and groups RBAC and the Node authorizer expect.
func TestWritePKI(t *testing.T) {
	dir := t.TempDir()
	c := Config{Dir: dir}
	nodes, _ := Nodes(2)
	if err := writePKI(c, nodes); err != nil {
		t.Fatal(err)
	}
	caCert := readCert(t, filepath.Join(dir, "pki", "ca.crt"))
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	srv := readCert(t, filepath.Join(dir, "pki", "apiserver.crt"))
	for _, name := range []string{HostIP, KubernetesServiceIP, "kubernetes.default.svc"} {
		if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("apiserver certificate for %s: %v", name, err)
		}
	}
	tests := []struct {
		user, cn string
		orgs     []string
	}{
		{"admin", "kubernetes-admin", []string{"system:masters"}},
		{"kube-proxy", "system:kube-proxy", nil},
		{"kubelet-smr-node2", "system:node:smr-node2", []string{"system:nodes"}},
	}
	for _, tc := range tests {
		kc, err := os.ReadFile(c.kubeconfig(tc.user))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(kc), "server: https://198.18.0.1:6443") {
			t.Errorf("%s kubeconfig lacks the server URL:\n%s", tc.user, kc)
		}
		cert := certFromKubeconfig(t, string(kc))
		if cert.Subject.CommonName != tc.cn || !slices.Equal(cert.Subject.Organization, tc.orgs) {
			t.Errorf("%s: subject %v, want CN=%s O=%v", tc.user, cert.Subject, tc.cn, tc.orgs)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s client certificate: %v", tc.user, err)
		}
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseCert(t, b)
}

func parseCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func certFromKubeconfig(t *testing.T, kc string) *x509.Certificate {
	t.Helper()
	for _, line := range strings.Split(kc, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "client-certificate-data: "); ok {
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				t.Fatal(err)
			}
			return parseCert(t, b)
		}
	}
	t.Fatal("no client-certificate-data")
	return nil
}

// Three kubelets on one machine must not share any path, and each must point at its own smr-cri.
func TestNodeConfigsAreDisjoint(t *testing.T) {
	c := Config{Dir: "/state", Kubelet: "/cache/kubelet", KubeBin: "/cache/kube"}
	nodes, _ := Nodes(2)
	a, b := kubeletProc(c, nodes[0]), kubeletProc(c, nodes[1])
	for i := 1; i < len(a.Args); i++ {
		if a.Args[i] == b.Args[i] {
			t.Errorf("kubelet argument %q is the same on two nodes", a.Args[i])
		}
	}
	cfg := kubeletConfig(c, nodes[0])
	for _, want := range []string{"containerRuntimeEndpoint: unix:///state/trace/smr-node1/smr-cri.sock", "address: 198.18.0.11",
		"podLogsDir: /state/smr-node1/pod-logs", "failCgroupV1: false", "imageGCHighThresholdPercent: 100"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("kubelet config lacks %q:\n%s", want, cfg)
		}
	}
	if a.NetNS != "/var/run/netns/smr-node1" {
		t.Errorf("kubelet netns = %q", a.NetNS)
	}
}

// Down removes kubelet's container log links into the state directory and nothing else.
func TestRemoveLinksInto(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	links := map[string]string{
		"ours.log":   filepath.Join(state, "smr-node1", "pod-logs", "x", "0.log"),
		"other.log":  "/var/log/pods/other/0.log",
		"prefix.log": state + "-other/0.log", // same prefix, different directory
	}
	for name, dest := range links {
		if err := os.Symlink(dest, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "plain.log"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeLinksInto(dir, state); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if want := []string{"other.log", "plain.log", "prefix.log"}; !slices.Equal(got, want) {
		t.Fatalf("left %v, want %v", got, want)
	}
	if err := removeLinksInto(filepath.Join(dir, "missing"), state); err != nil {
		t.Fatalf("missing directory: %v", err)
	}
}

// A partition drops traffic to and from the other nodes and their pods only: the host (API
// server) stays reachable, and the node's own pod subnet is untouched.
func TestPartitionRules(t *testing.T) {
	nodes, _ := Nodes(3)
	got := partitionRules(nodes[1], nodes)
	want := `*filter
:SMR-PARTITION - [0:0]
-A SMR-PARTITION -s 198.18.0.11/32 -j DROP
-A SMR-PARTITION -d 198.18.0.11/32 -j DROP
-A SMR-PARTITION -s 198.19.1.0/24 -j DROP
-A SMR-PARTITION -d 198.19.1.0/24 -j DROP
-A SMR-PARTITION -s 198.18.0.13/32 -j DROP
-A SMR-PARTITION -d 198.18.0.13/32 -j DROP
-A SMR-PARTITION -s 198.19.3.0/24 -j DROP
-A SMR-PARTITION -d 198.19.3.0/24 -j DROP
-I INPUT 1 -j SMR-PARTITION
-I OUTPUT 1 -j SMR-PARTITION
-I FORWARD 1 -j SMR-PARTITION
COMMIT
`
	if got != want {
		t.Fatalf("partition rules:\n%s\nwant:\n%s", got, want)
	}
	if strings.Contains(got, HostIP+"/") {
		t.Fatal("partition must not cut the node from the control plane")
	}
}

func TestNodeLookup(t *testing.T) {
	nodes, _ := Nodes(2)
	cl := &Cluster{Nodes: nodes}
	tests := []struct {
		name    string
		wantErr bool
	}{{"smr-node2", false}, {"smr-node3", true}, {"", true}}
	for _, tc := range tests {
		n, err := cl.Node(tc.name)
		if (err != nil) != tc.wantErr || (err == nil && n.Name != tc.name) {
			t.Errorf("Node(%q) = %+v, %v", tc.name, n, err)
		}
	}
}

// The cluster lock is exclusive and released by its release function.
func TestLock(t *testing.T) {
	old := lockPath
	lockPath = filepath.Join(t.TempDir(), "lock")
	t.Cleanup(func() { lockPath = old })
	release, err := lock(nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		r, err := lock(io.Discard)
		if err == nil {
			r()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("second lock taken while the first is held")
	case <-time.After(100 * time.Millisecond): // not a timed assertion: only proves it waits
	}
	release()
	<-got
	if _, err := os.Stat(lockPath); err != nil {
		t.Fatal(err)
	}
	lockPath = "/nonexistent-dir/lock"
	if _, err := lock(nil); err == nil {
		t.Fatal("lock in a missing directory succeeded")
	}
}

// Only the flags a smr-cri build documents are passed to it.
func TestSmrCRIFlags(t *testing.T) {
	help := `Usage: smr-cri serve [flags]

Runs the CRI proxy ... --data-dir in prose does not count.

Flags:
  --data-dir string
      directory of every replica's raft log
      (default "/var/lib/smr-cri")
  --listen string
      path of the unix socket
  -node-name string
    	this node's name
`
	known := parseFlagNames(help)
	if !known["data-dir"] || !known["listen"] || !known["node-name"] || known["kubeconfig"] || len(known) != 3 {
		t.Fatalf("parsed flags %v", known)
	}
	c := Config{Dir: "/state", SmrCRI: "/bin/smr-cri"}
	nodes, _ := Nodes(2)
	args := strings.Join(smrCRIProc(c, nodes[1], known).Args, " ")
	for _, want := range []string{"--listen=/state/trace/smr-node2/smr-cri.sock", "--data-dir=/state/smr-node2/smr-cri-data", "--node-name=smr-node2"} {
		if !strings.Contains(args, want) {
			t.Errorf("smr-cri args %q lack %s", args, want)
		}
	}
	if strings.Contains(args, "--kubeconfig") || strings.Contains(args, "--pki-dir") {
		t.Errorf("smr-cri args %q pass a flag this build does not know", args)
	}
}

// Every node's smr-cri gets the same raft CA directory (members on different nodes must trust
// one CA), and not the Kubernetes PKI directory.
func TestSmrCRISharedRaftPKIDir(t *testing.T) {
	c := Config{Dir: "/state", SmrCRI: "/bin/smr-cri"}
	nodes, _ := Nodes(2)
	known := map[string]bool{"pki-dir": true}
	for _, n := range nodes {
		args := strings.Join(smrCRIProc(c, n, known).Args, " ")
		if !strings.Contains(args, "--pki-dir=/state/smr-cri-pki") {
			t.Errorf("%s: smr-cri args %q lack the shared --pki-dir=/state/smr-cri-pki", n.Name, args)
		}
	}
	if c.raftPKIDir() == c.pkiDir() {
		t.Fatal("raft CA directory is the Kubernetes PKI directory")
	}
}

func TestParseLeaderChanges(t *testing.T) {
	log := `time=2026-11-25T13:20:22.050Z level=INFO msg="2 became follower at term 2" group=default.redis member=2
time=2026-11-25T13:20:22.054Z level=INFO msg="1 became leader at term 2" group=default.redis member=1 group=default.redis member=1
time=2026-11-25T13:21:00.000Z level=INFO msg="3 became leader at term 1" group=other.redis member=3
ts=2026-11-25T13:20:22.060Z smr=commit group=default.redis index=5 term=2 session=0 op="RESET" origin=2
time=2026-11-25T13:22:00.000Z level=INFO msg="1 became leader at term 4" group=default.redis member=1`
	got := parseLeaderChanges(bufio.NewScanner(strings.NewReader(log)), "default.redis", "smr-node1")
	want := []LeaderChange{
		{At: "2026-11-25T13:20:22.054Z", Member: 1, Term: 2, Node: "smr-node1"},
		{At: "2026-11-25T13:22:00.000Z", Member: 1, Term: 4, Node: "smr-node1"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("parseLeaderChanges = %+v, want %+v", got, want)
	}
}

func TestParseSessionEnds(t *testing.T) {
	log := `time=2026-12-03T17:00:00.000Z level=INFO msg="session ended on every replica" group=e2e-smr.redis session=2a0000beef index=4711 proposed_by=3 reason="x"
time=2026-12-03T17:00:00.001Z level=INFO msg="session ended on every replica" group=other.redis session=1 index=5 proposed_by=1 reason="y"
time=2026-12-03T17:00:00.002Z level=WARN msg="session's connection state cannot be rebuilt here: ending it on every replica" group=e2e-smr.redis session=2a0000beef index=4700
time=2026-12-03T17:00:01.000Z level=INFO msg="session ended on every replica" component=replication group=e2e-smr.redis session=3b index=4712 proposed_by=3 reason="z"`
	got := parseSessionEnds(bufio.NewScanner(strings.NewReader(log)), "e2e-smr.redis", "smr-node2")
	want := []SessionEnd{{Session: "2a0000beef", Index: 4711, Node: "smr-node2"}, {Session: "3b", Index: 4712, Node: "smr-node2"}}
	if !slices.Equal(got, want) {
		t.Fatalf("parseSessionEnds = %+v, want %+v", got, want)
	}
}

// smr-cri's output goes to the node's trace directory (all the trace DaemonSet mounts) and
// logs/<name>.log links to it, whatever an earlier run left at that name.
func TestLogFileOf(t *testing.T) {
	c := Config{Dir: t.TempDir()}
	n := Node{Name: "smr-node2"}
	p := smrCRIProc(c, n, nil)
	link := filepath.Join(c.logDir(), p.Name+".log")
	if err := os.MkdirAll(c.logDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		before func() error
	}{
		{"fresh", func() error { return nil }},
		{"again (restart)", func() error { return nil }},
		{"a regular file of an older layout", func() error { os.Remove(link); return os.WriteFile(link, []byte("old\n"), 0o644) }},
		{"a stale link", func() error { os.Remove(link); return os.Symlink("elsewhere.log", link) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.before(); err != nil {
				t.Fatal(err)
			}
			got, err := logFileOf(c, p)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.smrLog(n.Name) || filepath.Dir(got) != c.traceDir(n.Name) || filepath.Dir(c.smrSocket(n.Name)) != c.traceDir(n.Name) {
				t.Fatalf("log %s, socket %s: want both in %s", got, c.smrSocket(n.Name), c.traceDir(n.Name))
			}
			line := tc.name + "\n"
			f, err := os.OpenFile(got, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(line)
			f.Close()
			b, err := os.ReadFile(link)
			if err != nil || !strings.HasSuffix(string(b), line) {
				t.Fatalf("%s reads %q, %v; want it to end with %q", link, b, err, line)
			}
		})
	}
	// Processes without LogFile keep their log in logs/.
	if got, err := logFileOf(c, etcdProc(c)); err != nil || got != filepath.Join(c.logDir(), "etcd.log") {
		t.Fatalf("etcd log = %s, %v", got, err)
	}
}

func TestParseMembershipChanges(t *testing.T) {
	log := `time=2026-12-03T17:40:01.000Z level=INFO msg="membership change" group=ns.redis op=add-learner member=4 size=5 voters=[1 2 3]
time=2026-12-03T17:40:01.100Z level=INFO msg="membership change" group=other.redis op=remove member=2 size=1
time=2026-12-03T17:40:02.000Z level=INFO msg="1 became leader at term 2" group=ns.redis member=1
time=2026-12-03T17:40:03.000Z level=INFO msg="membership change" group=ns.redis op=promote member=4 size=5`
	got := parseMembershipChanges(bufio.NewScanner(strings.NewReader(log)), "ns.redis", "smr-node1")
	want := []MembershipChange{
		{At: "2026-12-03T17:40:01.000Z", Op: "add-learner", Member: 4, Node: "smr-node1"},
		{At: "2026-12-03T17:40:03.000Z", Op: "promote", Member: 4, Node: "smr-node1"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("parseMembershipChanges = %+v, want %+v", got, want)
	}
}
