package replication

import (
	"encoding/csv"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// redisBenchmark runs Debian's redis-benchmark against addr and returns
// requests/s and p50 latency (ms) per test name ("SET", "GET").
func redisBenchmark(b *testing.B, addr string, clients, requests int) map[string][2]float64 {
	return redisBenchmarkT(b, addr, clients, requests, "set,get")
}

func redisBenchmarkT(b *testing.B, addr string, clients, requests int, tests string) map[string][2]float64 {
	b.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("redis-benchmark", "-h", host, "-p", port, "-c", strconv.Itoa(clients),
		"-n", strconv.Itoa(requests), "-t", tests, "-r", "1000", "--csv").CombinedOutput()
	if err != nil {
		b.Fatalf("redis-benchmark against %s: %v\n%s", addr, err, out)
	}
	rows, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		b.Fatalf("parse redis-benchmark CSV: %v\n%s", err, out)
	}
	res := map[string][2]float64{}
	for _, row := range rows[1:] {
		if len(row) < 5 {
			continue
		}
		rps, _ := strconv.ParseFloat(row[1], 64)
		p50, _ := strconv.ParseFloat(row[4], 64)
		res[row[0]] = [2]float64{rps, p50}
	}
	if _, ok := res["SET"]; !ok && strings.Contains(tests, "set") {
		b.Fatalf("redis-benchmark printed no SET result:\n%s", out)
	}
	return res
}

// BenchmarkRedisReplicatedVsPlain compares, in one run, redis-benchmark
// (50 clients) against one plain redis-server and against a 3-replica group
// in this process (raftcore with fsync, in-memory raft network, one
// redis-server per replica). It reports set/get throughput ratios and the
// p50 latency added at 1 client, in the format of `make bench`:
// the numbers exclude pods, CRI and iptables redirection.
func BenchmarkRedisReplicatedVsPlain(b *testing.B) {
	requireIntegration(b)
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		b.Fatalf("redis-benchmark not installed (apt-get install redis-tools): %v", err)
	}
	plain := startRedis(b)
	apps := []string{startRedis(b), startRedis(b), startRedis(b)}
	c := newCluster(b, clusterOpts{port: respPort, appAddrs: apps, fsync: os.Getenv("SMR_BENCH_NOFSYNC") == ""})
	entry := c.replicas[0].addr
	const n = 20000
	b.ResetTimer()
	for range b.N {
		base, smr := redisBenchmark(b, plain, 50, n), redisBenchmark(b, entry, 50, n)
		base1, smr1 := redisBenchmark(b, plain, 1, 2000), redisBenchmark(b, entry, 1, 2000)
		set, get := smr["SET"][0]/base["SET"][0], smr["GET"][0]/base["GET"][0]
		added := smr1["SET"][1] - base1["SET"][1]
		b.ReportMetric(set, "set_ratio")
		b.ReportMetric(get, "get_ratio")
		b.ReportMetric(added, "p50_added_ms")
		b.ReportMetric(smr["SET"][0], "smr_set_rps")
		b.ReportMetric(base["SET"][0], "plain_set_rps")
		fmt.Printf("bench: set ratio=%.2f get ratio=%.2f p50 added latency at 1 client=%.2f ms\n", set, get, added)
	}
}
