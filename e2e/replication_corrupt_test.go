package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smr-io/smr-cri/replication"
)

// TestReplicatedCorruptReplica: a key is written straight into one replica's app (inside its
// pod at 127.0.0.1, around smr-cri). The ordered audit (at least once a minute while there are
// writes) must find that replica alone different and repair it from a majority member's
// snapshot (its own snapshots, taken every 10000 entries, may hold the corruption): the key is
// gone and a DivergenceDetected event names the replica.
func TestReplicatedCorruptReplica(t *testing.T) {
	cl := requireCluster(t)
	ctx := context.Background()
	deployRedisSet(ctx, t, cl)
	victim := victimPod(ctx, t, cl, false)
	const key = "corrupt-one-replica:direct"
	scenario(t, "corrupt-one-replica", cl.Nodes[0].Name, func(ctx context.Context, t *testing.T) {
		w := watchRepairs(ctx, t, replication.CauseDivergence, victim)
		detected := events(ctx, t, victim, "DivergenceDetected")
		rdb := podRedis(ctx, t, cl, victim)
		if err := rdb.Set(ctx, key, "written around smr-cri", 0).Err(); err != nil {
			t.Fatalf("write into %s's app directly: %v", victim, err)
		}
		// Default audit interval 60 s, counted from the last audit: a repair within 3 minutes.
		w.wait(ctx, t, cl, 3*time.Minute)
		if n := events(ctx, t, victim, "DivergenceDetected"); n <= detected {
			t.Errorf("%s repaired for divergence without a DivergenceDetected event", victim)
		}
		// The rebuilt app has the log's state only.
		eventually(ctx, t, time.Minute, "the direct write gone from "+victim, func() error {
			err := rdb.Get(ctx, key).Err()
			if errors.Is(err, redis.Nil) {
				return nil
			}
			if err == nil {
				return fmt.Errorf("%s still holds %s", victim, key)
			}
			return err
		})
	})
}

// events counts pod's events of reason (their counts summed).
func events(ctx context.Context, t *testing.T, pod, reason string) int {
	t.Helper()
	out := mustKubectl(ctx, t, "", "get", "events", "-n", smrNS, "--field-selector", "involvedObject.name="+pod+",reason="+reason,
		"-o", `jsonpath={range .items[*]}{.count}{"\n"}{end}`)
	sum := 0
	for _, f := range strings.Fields(out) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			n = 1
		}
		sum += n
	}
	return sum
}
