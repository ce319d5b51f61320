package daemon

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
	"github.com/smr-io/smr-cri/test/lab/redislab"
)

// TestIntegrationRebuildRefusesClientsWithReason: while a replica (a
// daemon over a real redis-server) is rebuilt after its app container
// exited, no client sees a bare EOF or reset: a client whose connection
// was open before the repair and a new client each get the refusal that
// names the reason and ends "; try another replica" (the text clients and
// testcheck.NotSent rely on), all through the rebuild; the pod's listener
// stays the same socket (listened once), and once the app is back the
// replica serves the log's state again.
func TestIntegrationRebuildRefusesClientsWithReason(t *testing.T) {
	nodelab.RequireIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	app := redislab.Start(t).Addr
	dial := &switchDialer{app: app}
	clientAddr, raftPort := freeport.AddrT(t), freeport.PortT(t)
	var listens atomic.Int32
	d, err := New(Config{
		DataDir: t.TempDir(), TickInterval: 10 * time.Millisecond, Intercept: &nopInterceptor{},
		OriginalPort: func(net.Conn) (int, error) { return 6379, nil },
		ListenApp: func(_, _ string) (net.Listener, error) {
			listens.Add(1)
			return net.Listen("tcp", clientAddr)
		},
		ListenRaft: func(_, addr string) (net.Listener, error) { return net.Listen("tcp", addr) },
		Dialer:     func(string) replication.AppDialer { return dial },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	if err := d.AttachPod(ctx, onePod("sb1", raftPort)); err != nil {
		t.Fatal(err)
	}
	incr(t, ctx, clientAddr, 3)

	// A client connected before the repair, idle after a write.
	open, err := net.Dial("tcp", clientAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	_ = open.SetDeadline(time.Now().Add(30 * time.Second))
	openR := bufio.NewReader(open)
	if _, err := open.Write([]byte("*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := openR.ReadString('\n'); err != nil || line != "+OK\r\n" {
		t.Fatalf("SET before the repair: %q %v", line, err)
	}

	// The app container exits (SIGKILL) and comes back empty: the replica
	// is fenced and rebuilt; its app stays unreachable for a while.
	dial.dead.Store(true)
	direct := redis.NewClient(&redis.Options{Addr: app, Protocol: 2, DisableIdentity: true})
	defer direct.Close()
	if err := direct.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	d.mgr.ContainerExited(ctx, "sb1", "c0ffee", "redis", 0, "exit code 137")

	const wantHead = "-ERR smr-cri: replication unavailable: app on this replica is not ready: replica rebuilding: repair (cause container-exit"
	refusal := func(who, reply string) {
		t.Helper()
		if !strings.HasPrefix(reply, wantHead) || !strings.HasSuffix(reply, "; try another replica\r\n") {
			t.Errorf("%s during the rebuild got %q, want %q...; try another replica", who, reply, wantHead)
		}
	}
	get := "*2\r\n$3\r\nGET\r\n$1\r\na\r\n"
	if _, err := open.Write([]byte(get)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(openR)
	if err != nil {
		t.Fatalf("the open connection ended with %v after %q, want the refusal and a clean close", err, b)
	}
	refusal("the connection open since before the repair", string(b))
	// New clients, over the whole rebuild (the old run stopping, the gap
	// until the next run accepts, the new run waiting for its app).
	for i := range 10 {
		refusal("new client "+string(rune('0'+i)), rawRoundTrip(t, clientAddr, get))
		time.Sleep(100 * time.Millisecond)
	}

	dial.dead.Store(false)
	incr(t, ctx, clientAddr, 1)
	c := redis.NewClient(&redis.Options{Addr: clientAddr, Protocol: 2, DisableIdentity: true})
	defer c.Close()
	if v, err := c.Get(ctx, "a").Result(); err != nil || v != "1" {
		t.Errorf("GET a after the rebuild: %q %v, want 1 (replayed from the log)", v, err)
	}
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "4" {
		t.Errorf("GET k after the rebuild: %q %v, want 4", v, err)
	}
	if n := listens.Load(); n != 1 {
		t.Errorf("the pod's listener was opened %d times, want once (kept across the rebuild)", n)
	}
}
