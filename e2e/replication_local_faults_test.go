package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/replication"
)

// followerPartition is how long the follower's node stays cut off: many election timeouts, and
// long enough for the others to commit thousands of entries without it.
const followerPartition = 20 * time.Second

// TestReplicatedPartitionFollower: a follower's node is cut off from the others (iptables DROP
// in its namespace) while the workload goes on through the leader's node, then healed. The
// majority keeps serving; the follower must catch up (from the log, or a snapshot if the log
// moved past it) and serve again, equal to the others.
func TestReplicatedPartitionFollower(t *testing.T) {
	cl := requireCluster(t)
	ctx := context.Background()
	deployRedisSet(ctx, t, cl)
	leader, _ := leaderNode(ctx, t, cl)
	victim := otherNode(cl, leader)
	scenario(t, "partition-follower", leader, func(ctx context.Context, t *testing.T) {
		if err := cl.Partition(ctx, victim); err != nil {
			t.Fatal(err)
		}
		heal := sync.OnceFunc(func() {
			if err := cl.Heal(ctx, victim); err != nil {
				t.Error(err)
			}
		})
		defer heal() // never leave the node cut off, whatever fails
		time.Sleep(followerPartition)
		heal()
		waitServing(ctx, t, cl)
	})
}

// TestReplicatedAppClosesConnections: one replica's Redis closes every client connection (CLIENT
// KILL TYPE normal, run inside its pod at 127.0.0.1, around smr-cri), as an app with an idle
// timeout or an operator's CLIENT KILL would. The sessions die on that replica only; it must
// repair (cause session-broken) instead of skipping their later requests there.
func TestReplicatedAppClosesConnections(t *testing.T) {
	cl := requireCluster(t)
	ctx := context.Background()
	deployRedisSet(ctx, t, cl)
	victim := victimPod(ctx, t, cl, false)
	scenario(t, "app-closes-connections", cl.Nodes[0].Name, func(ctx context.Context, t *testing.T) {
		w := watchRepairs(ctx, t, replication.CauseSessionBroken, victim)
		n, err := podRedis(ctx, t, cl, victim).ClientKillByFilter(ctx, "TYPE", "normal", "SKIPME", "yes").Result()
		if err != nil {
			t.Fatalf("CLIENT KILL in %s's app: %v", victim, err)
		}
		if n == 0 {
			t.Fatalf("CLIENT KILL in %s's app closed no connection: smr-cri holds none there?", victim)
		}
		t.Logf("CLIENT KILL closed %d connections of %s's app", n, victim)
		w.wait(ctx, t, cl, 3*time.Minute)
	})
}
