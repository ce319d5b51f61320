package appstate

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"
)

// BenchmarkRedisDigest measures what one ordered audit costs on a real
// Redis, for both capture paths in the same run:
//   - fork: the group's stall is the BGSAVE round trip on the kept
//     management connection (Redis forks; the connection is prepared
//     off the lock, as the audit's keeper does);
//     digest_s is the whole copy-on-write digest (save, read, hash), which
//     runs off the executor's lock;
//   - commands (the fallback, the baseline): the whole digest runs under
//     the lock, so it is all stall.
//
// Prints "audit: keys=K stall_ms=S digest_s=D" for the fork path, then the
// baseline's and the ratio.
// SMR_INTEGRATION=1 go test ./replication/appstate -run '^$' -bench RedisDigest
func BenchmarkRedisDigest(b *testing.B) {
	requireIntegration(b)
	ctx := context.Background()
	for _, keys := range []int{10000, 100000} {
		b.Run(strconv.Itoa(keys), func(b *testing.B) {
			port := startRedis(b, "--enable-debug-command", "yes")
			c := newClient(b, port, Credentials{})
			c.do("DEBUG", "POPULATE", strconv.Itoa(keys), "key", "64")
			a := openRedis(b, port, Credentials{})
			fd := preparedFork(b, a)
			opt := DigestOptions{ExpiringBy: time.Now().Add(10 * time.Second)}
			fs, err := fd.ForkDigest(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := fs.Digest(ctx, opt); err != nil {
				b.Fatal(err)
			}
			var stall, forkTotal, commands, ping time.Duration
			var forkUsec int64
			for b.Loop() {
				// The floor of any stall: one round trip to this Redis.
				t0 := time.Now()
				c.do("PING")
				ping += time.Since(t0)
				if err := fd.PrepareFork(ctx); err != nil { // the keeper's tick, off the lock
					b.Fatal(err)
				}
				t0 = time.Now()
				fs, err := fd.ForkDigest(ctx)
				stall += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				info := infoFields(c.do("INFO", "stats").str)
				us, _ := strconv.ParseInt(info["latest_fork_usec"], 10, 64)
				forkUsec += us
				df, err := fs.Digest(ctx, opt)
				forkTotal += time.Since(t0)
				if err != nil || df.Keys != keys {
					b.Fatalf("fork digest: %v keys, %v", df.Keys, err)
				}
				t0 = time.Now()
				dc, err := a.Digest(ctx, opt)
				commands += time.Since(t0)
				if err != nil || dc != df {
					b.Fatalf("command digest %v (%v) differs from the fork digest %v", dc, err, df)
				}
			}
			n := time.Duration(b.N)
			b.ReportMetric(float64(stall/n)/1e6, "stall_ms")
			fmt.Printf("audit: keys=%d stall_ms=%.1f digest_s=%.3f fork_ms=%.1f ping_ms=%.2f baseline_commands_stall_ms=%.0f stall_ratio=%.0fx\n", keys,
				float64(stall/n)/1e6, (forkTotal / n).Seconds(), float64(forkUsec)/float64(b.N)/1e3, float64(ping/n)/1e6,
				float64(commands/n)/1e6, commands.Seconds()/stall.Seconds())
		})
	}
}
