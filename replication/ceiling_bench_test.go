package replication

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/redisbench"
)

// ceilingDepth is the pipelined ceiling's requests in flight per app
// connection (redis-benchmark -P 32 per loop).
const ceilingDepth = 32

// concurrentSetLoops runs one redisbench.SetLoop of n SETs at depth per
// address, all at once, and returns the slowest loop's rate (the group
// applies at the pace of its slowest replica).
func concurrentSetLoops(ctx context.Context, addrs []string, n, depth int) (float64, error) {
	rates := make([]float64, len(addrs))
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, addr := range addrs {
		wg.Go(func() { rates[i], errs[i] = redisbench.SetLoop(ctx, addr, n, depth) })
	}
	wg.Wait()
	slowest := rates[0]
	for i, r := range rates {
		if errs[i] != nil {
			return 0, errs[i]
		}
		slowest = min(slowest, r)
	}
	return slowest, nil
}

// BenchmarkAppCeiling measures, in one run, the most a 3-replica group
// on this machine could reach when every replica executes writes on its app
// with no ordering cost at all, against redis-benchmark with 50 clients on a
// plain redis-server:
//
//   - serial: three SET loops, one per replica's redis-server, each request
//     after the previous reply (the executor's rule before an ordered
//     pipeline: one write at a time per group, in log order, each waiting for
//     its complete response);
//   - pipelined: three loops over one connection each with ceilingDepth
//     requests in flight (what an ordered pipeline to the app may do, since
//     Redis answers one connection's requests in order).
//
// Each ratio bounds `make bench`'s set ratio under that rule (every replica
// runs on the same 2 cores in the benchmark; on separate nodes each replica
// would have its own). It prints one line per ceiling:
//
//	bench-ceiling: serial SET round trips, 3 at once=.. req/s each (1 alone=..), plain redis 50 clients=.. req/s, set ratio ceiling=..
//	bench-ceiling-pipelined: pipelined SET depth 32, 3 at once=.. req/s each (1 alone=..), plain redis 50 clients=.. req/s, set ratio ceiling=..
func BenchmarkAppCeiling(b *testing.B) {
	requireIntegration(b)
	plain := startRedis(b)
	apps := []string{startRedis(b), startRedis(b), startRedis(b)}
	const n, nPipelined = 20000, 200000
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.ResetTimer()
	for range b.N {
		base := redisBenchmark(b, plain, 50, n, "set")["SET"].RPS
		for _, c := range []struct {
			label, what         string
			n, depth            int
			ratioMetric, prefix string
		}{
			{"bench-ceiling", "serial SET round trips", n, 1, "set_ceiling_ratio", "serial"},
			{"bench-ceiling-pipelined", fmt.Sprintf("pipelined SET depth %d", ceilingDepth), nPipelined, ceilingDepth,
				"pipelined_set_ceiling_ratio", "pipelined"},
		} {
			three, err := concurrentSetLoops(ctx, apps, c.n, c.depth)
			if err != nil {
				b.Fatal(err)
			}
			single, err := redisbench.SetLoop(ctx, apps[0], c.n, c.depth)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(three/base, c.ratioMetric)
			b.ReportMetric(three, c.prefix+"3_rps")
			b.ReportMetric(single, c.prefix+"1_rps")
			fmt.Printf("%s: %s, 3 at once=%.0f req/s each (1 alone=%.0f), plain redis 50 clients=%.0f req/s, set ratio ceiling=%.2f\n",
				c.label, c.what, three, single, base, three/base)
		}
		b.ReportMetric(base, "plain_set_rps")
	}
}
