package replication

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/redisbench"
)

// redisBenchmark runs Debian's redis-benchmark against addr (random keys out
// of 1000; tests "" means set,get) and returns its results per test name.
func redisBenchmark(b *testing.B, addr string, clients, requests int, tests string) redisbench.Results {
	b.Helper()
	return redisBenchmarkPipelined(b, addr, clients, requests, tests, 0)
}

// redisBenchmarkPipelined is redisBenchmark with redis-benchmark -P pipeline.
func redisBenchmarkPipelined(b *testing.B, addr string, clients, requests int, tests string, pipeline int) redisbench.Results {
	b.Helper()
	// redis-benchmark keeps reconnecting to a server that refuses: bound it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := redisbench.Run(ctx, redisbench.Options{Addr: addr, Clients: clients, Requests: requests, Keyspace: 1000, Tests: tests, Pipeline: pipeline})
	if err != nil {
		b.Fatal(err)
	}
	return res
}

// BenchmarkRedisReplicatedVsPlain compares, in one run, redis-benchmark
// (50 clients) against one plain redis-server and against a 3-replica group
// in this process (raftcore with fsync, in-memory raft network, one
// redis-server per replica). It reports set/get throughput ratios and the
// p50 latency added at 1 client, then the ratios of a pipelined-client
// round (redis-benchmark -P 16, same 50 clients), in the format of
// `make bench`:
//
//	bench: set ratio=R1 get ratio=R2 p50 added latency at 1 client=L ms
//	bench-pipelined: set ratio=R3 get ratio=R4
//
// The numbers exclude pods, CRI and iptables redirection.
func BenchmarkRedisReplicatedVsPlain(b *testing.B) {
	requireIntegration(b)
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		b.Fatalf("redis-benchmark not installed (apt-get install redis-tools): %v", err)
	}
	plain := startRedis(b)
	apps := []string{startRedis(b), startRedis(b), startRedis(b)}
	c := newCluster(b, clusterOpts{port: respPort, appAddrs: apps, fsync: os.Getenv("SMR_BENCH_NOFSYNC") == ""})
	entry := c.replicas[0].addr
	// Plain Redis answers -P 16 about ten times faster: more requests for
	// a run of similar length (ratios are of req/s, independent of -n).
	// SMR_BENCH_SCALE scales every count, as in the pod benchmark.
	scale, err := redisbench.Scale(os.Getenv("SMR_BENCH_SCALE"))
	if err != nil {
		b.Fatal(err)
	}
	const pipeline = 16
	n, n1, nPipelinedPlain := redisbench.Scaled(20000, scale), redisbench.Scaled(2000, scale), redisbench.Scaled(200000, scale)
	b.ResetTimer()
	for range b.N {
		base, smr := redisBenchmark(b, plain, 50, n, ""), redisBenchmark(b, entry, 50, n, "")
		base1, smr1 := redisBenchmark(b, plain, 1, n1, ""), redisBenchmark(b, entry, 1, n1, "")
		line, err := redisbench.Compare(base, smr, base1, smr1)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(line.SetRatio, "set_ratio")
		b.ReportMetric(line.GetRatio, "get_ratio")
		b.ReportMetric(line.AddedP50ms, "p50_added_ms")
		baseP, smrP := redisBenchmarkPipelined(b, plain, 50, nPipelinedPlain, "", pipeline), redisBenchmarkPipelined(b, entry, 50, n, "", pipeline)
		pipelined, err := redisbench.RatiosOf(baseP, smrP)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(pipelined.Set, "pipelined_set_ratio")
		b.ReportMetric(pipelined.Get, "pipelined_get_ratio")
		b.ReportMetric(smr["SET"].RPS, "smr_set_rps")
		b.ReportMetric(base["SET"].RPS, "plain_set_rps")
		fmt.Println(line.Format("bench"))
		fmt.Println(pipelined.Format("bench-pipelined"))
	}
}
