package daemon

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/fwdproxy"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
	"github.com/smr-io/smr-cri/test/lab/redisbench"
)

// Request counts of one `make bench` run. The plain pod is about ten times
// faster than the group, so it gets more requests for a run of similar
// length; ratios are of requests per second, which do not depend on -n.
// SMR_BENCH_SCALE (a float, default 1) scales them all.
const (
	benchPlainRequests     = 100000 // 50 clients, plain pod (and the proxy ceiling's direct runs)
	benchSmrRequests       = 25000  // 50 clients, replicated group (also pipelined)
	benchSingleRequests    = 2000   // 1 client, each
	benchPipelinedRequests = 400000 // 50 clients -P 16, plain pod
	benchProxyRequests     = 50000  // 50 clients through the forwarding proxy
	benchPipeline          = 16     // redis-benchmark -P of the pipelined round
	benchKeyspace          = 1000   // -r
	benchRounds            = 3      // median of this many plain/smr rounds (SMR_BENCH_ROUNDS)
	benchGroup             = "smrtest.redis"
	// benchProxyPort is the proxy pod's port redirected to the forwarding
	// proxy (its app keeps 6379, reached directly for the baseline).
	benchProxyPort = 6380
)

// BenchmarkRedisPodsReplicatedVsPlain is `make bench`: in one run it starts
// a private containerd, one real `smr-cri serve` in front of it, three
// replicated Redis pods of one group (smr.io/replicate, static peers, raft
// over mutual TLS with a disk WAL) and one plain Redis pod, all through
// serve's CRI socket. redis-benchmark (Debian redis-tools) runs SET and GET
// with 50 clients against the plain pod's IP and against the group leader's
// pod IP, where the pod netns' iptables redirect hands every connection to
// smr-cri; then with 1 client against both for the median latency; then
// with 50 pipelining clients (-P 16) against both. It reports the ratios as
// metrics and prints the lines `make bench` ends with:
//
//	bench: set ratio=R1 get ratio=R2 p50 added latency at 1 client=L ms
//	bench-pipelined: set ratio=R3 get ratio=R4
//	bench-proxy-ceiling: set ratio=R5 get ratio=R6
//
// bench-proxy-ceiling is the proxy's own share: a second plain Redis pod,
// once direct and once through a forwarding proxy with no ordering
// (package fwdproxy: smr-cri's listener in the pod's netns behind the same
// netintercept REDIRECT rules, its framing and buffers, the app dialled in
// the netns; no raft, no executor), 50 clients each.
//
// The leader's pod is the entry point because a client there pays no
// forwarding hop to the leader; SMR_BENCH_VIA=follower measures through a
// follower's pod instead (what 2 of 3 clients of a Service spreading
// clients over the replicas see). Three rounds alternate plain and smr;
// each figure reported is the median over the rounds.
//
// SMR_BENCH_PROFILE=path adds serve --pprof-addr and, after the measured
// rounds, takes a CPU profile of serve while redis-benchmark loads the
// group (SMR_BENCH_PROFILE_ROUND, default set; SMR_BENCH_PROFILE_SECONDS,
// default 10) and writes it to path.
func BenchmarkRedisPodsReplicatedVsPlain(b *testing.B) {
	nodelab.RequireIntegration(b)
	scale, err := redisbench.Scale(os.Getenv("SMR_BENCH_SCALE"))
	if err != nil {
		b.Fatal(err)
	}
	rounds, err := benchRoundsFrom(os.Getenv("SMR_BENCH_ROUNDS"))
	if err != nil {
		b.Fatal(err)
	}
	prof, err := benchProfileFrom(os.Getenv("SMR_BENCH_PROFILE"), os.Getenv("SMR_BENCH_PROFILE_ROUND"), os.Getenv("SMR_BENCH_PROFILE_SECONDS"))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	metricsAddr := freeport.AddrT(b)
	serveArgs := []string{"--metrics-addr", metricsAddr}
	var pprofAddr string
	if prof.path != "" {
		pprofAddr = freeport.AddrT(b)
		serveArgs = append(serveArgs, "--pprof-addr", pprofAddr)
	}
	// SMR_BENCH_SERVE_ARGS adds serve flags for an A/B run (e.g. --insecure-raft).
	serveArgs = append(serveArgs, strings.Fields(os.Getenv("SMR_BENCH_SERVE_ARGS"))...)
	g := startReplicatedGroup(b, ctx, groupSpec{app: "redis", image: nodelab.RedisImage, ports: "6379/resp", serveArgs: serveArgs})
	plain := g.runPod(b, ctx, &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "redis-plain", Namespace: "smrtest", Uid: "uid-redis-plain"},
		Labels:   map[string]string{"app": "redis-plain"}, // no smr.io/replicate: containerd alone
	}, "redis", nodelab.RedisImage)
	proxyPod := g.runPod(b, ctx, &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "redis-proxied", Namespace: "smrtest", Uid: "uid-redis-proxied"},
		Labels:   map[string]string{"app": "redis-proxied"}, // plain too: the forwarding proxy is the benchmark's
	}, "redis", nodelab.RedisImage)
	proxy := startForwardingProxy(b, ctx, proxyPod.netns)

	// All answer before measuring: the plain apps have started, the group
	// has a leader and every replica's app executes.
	plainAddr := net.JoinHostPort(plain.ip, "6379")
	retry(b, ctx, "SET on the plain pod", func() error { return redisSet(ctx, plainAddr, "ready") })
	directAddr, proxiedAddr := net.JoinHostPort(proxyPod.ip, "6379"), net.JoinHostPort(proxyPod.ip, strconv.Itoa(benchProxyPort))
	retry(b, ctx, "SET on the proxy pod, direct", func() error { return redisSet(ctx, directAddr, "ready") })
	retry(b, ctx, "SET through the forwarding proxy", func() error { return redisSet(ctx, proxiedAddr, "ready") })
	for _, p := range g.pods {
		retry(b, ctx, "SET through "+p.name, func() error { return redisSet(ctx, net.JoinHostPort(p.ip, "6379"), "ready") })
	}
	var leader int
	retry(b, ctx, "a leader in smr_leader on serve's /metrics", func() (err error) {
		leader, err = groupLeader(ctx, metricsAddr, benchGroup, len(g.pods))
		return err
	})
	entry, role, err := benchEntry(g.pods, leader, os.Getenv("SMR_BENCH_VIA"))
	if err != nil {
		b.Fatal(err)
	}
	smrAddr := net.JoinHostPort(entry.ip, "6379")
	b.Logf("plain pod %s at %s; group %s entry %s (%s; leader is member %d) at %s", plain.name, plainAddr, benchGroup, entry.name, role, leader, smrAddr)

	runP := func(addr string, clients, requests, pipeline int) redisbench.Results {
		b.Helper()
		res, err := redisbench.Run(ctx, redisbench.Options{Addr: addr, Clients: clients,
			Requests: redisbench.Scaled(requests, scale), Keyspace: benchKeyspace, Pipeline: pipeline})
		if err != nil {
			b.Fatal(err)
		}
		return res
	}
	run := func(addr string, clients, requests int) redisbench.Results {
		b.Helper()
		return runP(addr, clients, requests, 0)
	}
	b.ResetTimer()
	for range b.N {
		// Rounds alternate plain and smr so that a burst of load from
		// elsewhere on the machine hits both; medians over rounds are reported.
		var lines []redisbench.Line
		var pipelined, proxied []redisbench.Ratios
		rps := map[string][]float64{}
		for round := 1; round <= rounds; round++ {
			base, smr := run(plainAddr, 50, benchPlainRequests), run(smrAddr, 50, benchSmrRequests)
			base1, smr1 := run(plainAddr, 1, benchSingleRequests), run(smrAddr, 1, benchSingleRequests)
			line, err := redisbench.Compare(base, smr, base1, smr1)
			if err != nil {
				b.Fatal(err)
			}
			lines = append(lines, line)
			for k, v := range map[string]float64{"plain_set_rps": base["SET"].RPS, "plain_get_rps": base["GET"].RPS,
				"smr_set_rps": smr["SET"].RPS, "smr_get_rps": smr["GET"].RPS} {
				rps[k] = append(rps[k], v)
			}
			fmt.Printf("round %d: plain pod SET %.0f/s GET %.0f/s, 1-client SET p50 %.3f ms; smr via %s SET %.0f/s GET %.0f/s, 1-client SET p50 %.3f ms; %s\n",
				round, base["SET"].RPS, base["GET"].RPS, base1["SET"].P50ms, role, smr["SET"].RPS, smr["GET"].RPS, smr1["SET"].P50ms, line.Format("ratios"))

			baseP, smrP := runP(plainAddr, 50, benchPipelinedRequests, benchPipeline), runP(smrAddr, 50, benchSmrRequests, benchPipeline)
			pr, err := redisbench.RatiosOf(baseP, smrP)
			if err != nil {
				b.Fatal(err)
			}
			pipelined = append(pipelined, pr)
			fmt.Printf("round %d pipelined (-P %d): plain pod SET %.0f/s GET %.0f/s; smr via %s SET %.0f/s GET %.0f/s; %s\n",
				round, benchPipeline, baseP["SET"].RPS, baseP["GET"].RPS, role, smrP["SET"].RPS, smrP["GET"].RPS, pr.Format("ratios"))

			direct, fwd := run(directAddr, 50, benchPlainRequests), run(proxiedAddr, 50, benchProxyRequests)
			xr, err := redisbench.RatiosOf(direct, fwd)
			if err != nil {
				b.Fatal(err)
			}
			proxied = append(proxied, xr)
			fmt.Printf("round %d proxy ceiling: second plain pod direct SET %.0f/s GET %.0f/s; through the forwarding proxy SET %.0f/s GET %.0f/s; %s\n",
				round, direct["SET"].RPS, direct["GET"].RPS, fwd["SET"].RPS, fwd["GET"].RPS, xr.Format("ratios"))
			for k, v := range map[string]float64{"plain_pipelined_set_rps": baseP["SET"].RPS, "smr_pipelined_set_rps": smrP["SET"].RPS,
				"direct_set_rps": direct["SET"].RPS, "proxied_set_rps": fwd["SET"].RPS} {
				rps[k] = append(rps[k], v)
			}
		}
		med, err := redisbench.Median(lines)
		if err != nil {
			b.Fatal(err)
		}
		medP, err := redisbench.MedianRatios(pipelined)
		if err != nil {
			b.Fatal(err)
		}
		medX, err := redisbench.MedianRatios(proxied)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(med.SetRatio, "set_ratio")
		b.ReportMetric(med.GetRatio, "get_ratio")
		b.ReportMetric(med.AddedP50ms, "p50_added_ms")
		b.ReportMetric(medP.Set, "pipelined_set_ratio")
		b.ReportMetric(medP.Get, "pipelined_get_ratio")
		b.ReportMetric(medX.Set, "proxy_set_ratio")
		b.ReportMetric(medX.Get, "proxy_get_ratio")
		for k, v := range rps {
			b.ReportMetric(redisbench.MedianOf(v), k)
		}
		fmt.Println(med.Format("bench"))
		fmt.Println(medP.Format("bench-pipelined"))
		fmt.Println(medX.Format("bench-proxy-ceiling"))
	}
	b.StopTimer()

	// The proxy ceiling measured the redirect and the proxy: its
	// connections arrived redirected from the proxy port, and it forwarded
	// the benchmark's requests.
	if st := proxy.Stats(); st.Redirected == 0 || st.Redirected != st.Conns || st.Requests < int64(2*redisbench.Scaled(benchProxyRequests, scale)) {
		b.Fatalf("forwarding proxy stats %+v: want every connection redirected from port %d and the benchmark's requests forwarded", st, benchProxyPort)
	}
	if prof.path != "" {
		load := func() error {
			_, err := redisbench.Run(ctx, redisbench.Options{Addr: smrAddr, Clients: 50, Requests: benchSmrRequests / 5,
				Keyspace: benchKeyspace, Tests: prof.tests, Pipeline: prof.pipeline})
			return err
		}
		if err := profileServe(ctx, pprofAddr, prof, load); err != nil {
			b.Fatal(err)
		}
		fmt.Printf("profile: CPU profile of serve (%s via %s, %v) in %s: go tool pprof -top %s\n", prof.round, role, prof.duration, prof.path, prof.path)
	}

	// The writes went through replication, not around it: every replica's
	// app (reached inside its netns, bypassing the redirect) holds the same
	// keys, and serve traced the commits.
	waitFor(b, ctx, "the same DBSIZE on every replica's app", func() (bool, string) {
		var sizes []string
		same, first := true, int64(-1)
		for i, p := range g.pods {
			n, err := appDBSize(ctx, p.netns)
			sizes = append(sizes, fmt.Sprintf("%s=%d(%v)", p.name, n, err))
			if i == 0 {
				first = n
			}
			same = same && err == nil && n == first
		}
		// The benchmark's keys plus "ready": more than one.
		same = same && first > 1
		return same, strings.Join(sizes, " ")
	})
	if !strings.Contains(g.s.log(), "smr=commit group="+benchGroup) {
		b.Fatalf("no ordering trace of %s in serve's output: the traffic did not go through smr-cri", benchGroup)
	}
}

// benchEntry picks the replica pod redis-benchmark connects to: the
// leader's (via "" or "leader") or the first follower's ("follower").
func benchEntry(pods []labPod, leader int, via string) (labPod, string, error) {
	if leader < 1 || leader > len(pods) {
		return labPod{}, "", fmt.Errorf("leader member %d is not one of the %d pods", leader, len(pods))
	}
	switch via {
	case "", "leader":
		return pods[leader-1], "leader", nil
	case "follower":
		return pods[leader%len(pods)], "follower", nil
	}
	return labPod{}, "", fmt.Errorf("SMR_BENCH_VIA=%q: want leader or follower", via)
}

// benchRoundsFrom parses SMR_BENCH_ROUNDS: empty is benchRounds.
func benchRoundsFrom(s string) (int, error) {
	if s == "" {
		return benchRounds, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 20 {
		return 0, fmt.Errorf("SMR_BENCH_ROUNDS=%q: want a whole number from 1 to 20", s)
	}
	return n, nil
}

// redisSet runs one SET on a fresh connection.
func redisSet(ctx context.Context, addr, key string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer c.Close()
	if err := c.Set(ctx, key, "1", 0).Err(); err != nil {
		return fmt.Errorf("SET %s at %s: %w", key, addr, err)
	}
	return nil
}

// appDBSize asks the app inside netns directly (127.0.0.1:6379 there is
// not redirected) for its number of keys.
func appDBSize(ctx context.Context, netns string) (int64, error) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", Protocol: 2, DisableIdentity: true,
		Dialer: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return netintercept.DialInNetns(ctx, netns, "tcp4", addr)
		}})
	defer c.Close()
	return c.DBSize(ctx).Result()
}

// groupLeader reads the group's leader member ID from serve's Prometheus
// endpoint (gauge smr_leader, 0 while there is none).
func groupLeader(ctx context.Context, addr, group string, members int) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, fmt.Errorf("metrics request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	return parseLeader(bufio.NewScanner(resp.Body), group, members)
}

// parseLeader finds smr_leader{group="<group>"} in a Prometheus text
// exposition and checks it names one of members (1..members).
func parseLeader(sc *bufio.Scanner, group string, members int) (int, error) {
	prefix := `smr_leader{group="` + group + `"} `
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("smr_leader of %s = %q: %w", group, v, err)
		}
		id := int(f)
		if float64(id) != f || id < 0 || id > members {
			return 0, fmt.Errorf("smr_leader of %s = %v: not a member ID 1..%d", group, f, members)
		}
		if id == 0 {
			return 0, fmt.Errorf("group %s has no leader yet", group)
		}
		return id, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read metrics: %w", err)
	}
	return 0, fmt.Errorf("no smr_leader sample for group %s", group)
}

// startForwardingProxy runs the proxy ceiling's forwarding proxy for the
// plain pod at netns until the benchmark ends: a listener on smr-cri's own
// in-pod port (replication.DefaultListenerPort) opened in the netns as serve
// opens it, netintercept's REDIRECT of benchProxyPort to it (the rules serve
// installs, on another port so the app's own 6379 stays direct), and
// fwdproxy forwarding each connection to the app at 127.0.0.1:6379 in the
// netns, dialled as the executor dials.
func startForwardingProxy(b *testing.B, ctx context.Context, netns string) *fwdproxy.Proxy {
	b.Helper()
	ln, err := netintercept.ListenInNetns(netns, "tcp", ":"+strconv.Itoa(replication.DefaultListenerPort))
	if err != nil {
		b.Fatal(err)
	}
	ic := &netintercept.Interceptor{}
	if _, err := ic.Apply(ctx, netns, netintercept.Spec{ServicePorts: []uint16{benchProxyPort}, ListenerPort: replication.DefaultListenerPort}); err != nil {
		_ = ln.Close()
		b.Fatalf("redirect port %d to the forwarding proxy: %v", benchProxyPort, err)
	}
	dialer := replication.NetnsDialer{Path: netns}
	p, err := fwdproxy.New(fwdproxy.Config{Listener: ln, Protocol: framing.ProtoRESP,
		DialApp:      func(ctx context.Context) (net.Conn, error) { return dialer.DialApp(ctx, 6379) },
		OriginalPort: replication.OriginalPort, WantPort: benchProxyPort})
	if err != nil {
		_ = ln.Close()
		b.Fatal(err)
	}
	pctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- p.Serve(pctx, func(err error) { b.Logf("forwarding proxy: %v", err) }) }()
	b.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			b.Errorf("forwarding proxy: %v", err)
		}
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := ic.Cleanup(cctx, netns); err != nil {
			b.Errorf("remove the forwarding proxy's redirect: %v", err)
		}
	})
	return p
}
