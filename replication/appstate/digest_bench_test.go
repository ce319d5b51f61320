package appstate

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"testing"
	"time"
)

// BenchmarkRedisDigest measures what one ordered audit costs a replica on a
// real Redis: the digest runs under the serial executor's lock, so its
// whole duration is the group's stall. The baseline, in the same run, is a
// snapshot capture of the same keys (SCAN + PEXPIRETIME + DUMP). Prints
// "audit: keys=K stall_ms=S digest_s=D capture_s=C digest/capture=R".
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
			var digest, capture time.Duration
			for b.Loop() {
				t0 := time.Now()
				d, err := a.Digest(ctx, DigestOptions{ExpiringBy: time.Now().Add(10 * time.Second)})
				digest += time.Since(t0)
				if err != nil || d.Keys != keys {
					b.Fatalf("digest: %v keys, %v", d.Keys, err)
				}
				t0 = time.Now()
				if _, err := a.Capture(ctx, io.Discard); err != nil {
					b.Fatal(err)
				}
				capture += time.Since(t0)
			}
			n := time.Duration(b.N)
			b.ReportMetric(float64((digest / n).Milliseconds()), "stall_ms")
			fmt.Printf("audit: keys=%d stall_ms=%d digest_s=%.3f capture_s=%.3f digest/capture=%.2f\n", keys,
				(digest / n).Milliseconds(), (digest / n).Seconds(), (capture / n).Seconds(), digest.Seconds()/capture.Seconds())
		})
	}
}
