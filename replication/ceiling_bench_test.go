package replication

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// serialSetLoop sends n SETs to the redis-server at addr one at a time,
// each after the previous response, as the executor does for log entries,
// and returns the rate in requests/s.
func serialSetLoop(addr string, n int) (float64, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	req := []byte("*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$3\r\nxxx\r\n")
	start := time.Now()
	for range n {
		if _, err := c.Write(req); err != nil {
			return 0, fmt.Errorf("write %s: %w", addr, err)
		}
		if _, err := r.ReadSlice('\n'); err != nil {
			return 0, fmt.Errorf("read %s: %w", addr, err)
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// BenchmarkSerialAppCeiling measures, in one run, the most a 3-replica group
// on this machine could reach under the executor's rule (one write at a time
// per group, in log order, each waiting for its complete response): three
// serial SET loops, one per replica's redis-server, running at once with no
// ordering at all, against redis-benchmark with 50 clients on a plain
// redis-server. set_ceiling_ratio bounds `make bench`'s set ratio here
// (every replica runs on the same 2 cores in the benchmark; on separate
// nodes each replica would have its own).
func BenchmarkSerialAppCeiling(b *testing.B) {
	requireIntegration(b)
	plain := startRedis(b)
	apps := []string{startRedis(b), startRedis(b), startRedis(b)}
	const n = 20000
	b.ResetTimer()
	for range b.N {
		base := redisBenchmark(b, plain, 50, n, "set")["SET"].RPS
		rates := make([]float64, len(apps))
		errs := make([]error, len(apps))
		var wg sync.WaitGroup
		for i, addr := range apps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rates[i], errs[i] = serialSetLoop(addr, n)
			}()
		}
		wg.Wait()
		ceiling := rates[0]
		for i, r := range rates {
			if errs[i] != nil {
				b.Fatal(errs[i])
			}
			ceiling = min(ceiling, r)
		}
		single, err := serialSetLoop(apps[0], n)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ceiling/base, "set_ceiling_ratio")
		b.ReportMetric(ceiling, "serial3_rps")
		b.ReportMetric(single, "serial1_rps")
		b.ReportMetric(base, "plain_set_rps")
		fmt.Printf("bench-ceiling: serial SET round trips, 3 at once=%.0f req/s each (1 alone=%.0f), plain redis 50 clients=%.0f req/s, set ratio ceiling=%.2f\n",
			ceiling, single, base, ceiling/base)
	}
}
