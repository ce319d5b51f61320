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
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
	"github.com/smr-io/smr-cri/test/lab/redisbench"
)

// Request counts of one `make bench` run. The plain pod is about ten times
// faster than the group, so it gets more requests for a run of similar
// length; ratios are of requests per second, which do not depend on -n.
// SMR_BENCH_SCALE (a float, default 1) scales them all.
const (
	benchPlainRequests  = 100000 // 50 clients, plain pod
	benchSmrRequests    = 25000  // 50 clients, replicated group
	benchSingleRequests = 2000   // 1 client, each
	benchKeyspace       = 1000   // -r
	benchRounds         = 3      // median of this many plain/smr rounds (SMR_BENCH_ROUNDS)
	benchGroup          = "smrtest.redis"
)

// BenchmarkRedisPodsReplicatedVsPlain is `make bench`: in one run it starts
// a private containerd, one real `smr-cri serve` in front of it, three
// replicated Redis pods of one group (smr.io/replicate, static peers, raft
// over mutual TLS with a disk WAL) and one plain Redis pod, all through
// serve's CRI socket. redis-benchmark (Debian redis-tools) runs SET and GET
// with 50 clients against the plain pod's IP and against the group leader's
// pod IP, where the pod netns' iptables redirect hands every connection to
// smr-cri; then with 1 client against both for the median latency. It
// reports the ratios as metrics and prints the line `make bench` ends with:
//
//	bench: set ratio=R1 get ratio=R2 p50 added latency at 1 client=L ms
//
// The leader's pod is the entry point because a client there pays no
// forwarding hop to the leader; SMR_BENCH_VIA=follower measures through a
// follower's pod instead (what 2 of 3 clients of a Service spreading
// clients over the replicas see). Three rounds alternate plain and smr;
// each figure reported is the median over the rounds.
func BenchmarkRedisPodsReplicatedVsPlain(b *testing.B) {
	nodelab.RequireIntegration(b)
	scale, err := benchScale(os.Getenv("SMR_BENCH_SCALE"))
	if err != nil {
		b.Fatal(err)
	}
	rounds, err := benchRoundsFrom(os.Getenv("SMR_BENCH_ROUNDS"))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	metricsAddr := freeport.AddrT(b)
	// SMR_BENCH_SERVE_ARGS adds serve flags for an A/B run (e.g. --insecure-raft).
	serveArgs := append([]string{"--metrics-addr", metricsAddr}, strings.Fields(os.Getenv("SMR_BENCH_SERVE_ARGS"))...)
	g := startReplicatedGroup(b, ctx, groupSpec{app: "redis", image: nodelab.RedisImage, ports: "6379/resp", serveArgs: serveArgs})
	plain := g.runPod(b, ctx, &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "redis-plain", Namespace: "smrtest", Uid: "uid-redis-plain"},
		Labels:   map[string]string{"app": "redis-plain"}, // no smr.io/replicate: containerd alone
	}, "redis", nodelab.RedisImage)

	// Both answer before measuring: the plain app has started, the group
	// has a leader and every replica's app executes.
	plainAddr := net.JoinHostPort(plain.ip, "6379")
	retry(b, ctx, "SET on the plain pod", func() error { return redisSet(ctx, plainAddr, "ready") })
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

	run := func(addr string, clients, requests int) redisbench.Results {
		b.Helper()
		res, err := redisbench.Run(ctx, redisbench.Options{Addr: addr, Clients: clients,
			Requests: max(1, int(float64(requests)*scale)), Keyspace: benchKeyspace})
		if err != nil {
			b.Fatal(err)
		}
		return res
	}
	b.ResetTimer()
	for range b.N {
		// Rounds alternate plain and smr so that a burst of load from
		// elsewhere on the machine hits both; medians over rounds are reported.
		var lines []redisbench.Line
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
		}
		med, err := redisbench.Median(lines)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(med.SetRatio, "set_ratio")
		b.ReportMetric(med.GetRatio, "get_ratio")
		b.ReportMetric(med.AddedP50ms, "p50_added_ms")
		for k, v := range rps {
			b.ReportMetric(redisbench.MedianOf(v), k)
		}
		fmt.Println(med.Format("bench"))
	}
	b.StopTimer()

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

// benchScale parses SMR_BENCH_SCALE: empty is 1.
func benchScale(s string) (float64, error) {
	if s == "" {
		return 1, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f > 100 {
		return 0, fmt.Errorf("SMR_BENCH_SCALE=%q: want a number in (0, 100]", s)
	}
	return f, nil
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
