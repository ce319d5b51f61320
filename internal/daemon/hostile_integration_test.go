package daemon

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/test/lab/nodelab"
	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// Hostile byte streams aimed at the replicated ports of a real `smr-cri
// serve` (three Redis pods on a private containerd, clients entering through
// the pods' iptables redirect), while a well-behaved client keeps writing:
// random bytes, RESP with huge and negative lengths, deep nesting, partial
// frames, mutated valid commands, slowloris connections and 1,000 held
// connections. Afterwards serve must still answer CRI Version, every
// replica's Redis must answer through smr-cri, and the apps must hold equal
// data with every acknowledged write. SMR_HOSTILE_DURATION sets the attack
// time (default 45s; make test-security runs longer), and with
// SMR_SECURITY_REPORT set a pass records hostile-input=survived.
func TestIntegrationHostileInput(t *testing.T) {
	nodelab.RequireIntegration(t)
	attack := 45 * time.Second
	if v := os.Getenv("SMR_HOSTILE_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SMR_HOSTILE_DURATION=%q: %v", v, err)
		}
		attack = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), attack+10*time.Minute)
	defer cancel()
	g := startReplicatedGroup(t, ctx, groupSpec{app: "redis", image: nodelab.RedisImage, ports: "6379/resp"})
	var addrs []string
	var direct []*redis.Client
	for _, p := range g.pods {
		addrs = append(addrs, net.JoinHostPort(p.ip, "6379"))
		netns := p.netns
		d := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", Protocol: 2, DisableIdentity: true,
			Dialer: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return netintercept.DialInNetns(ctx, netns, "tcp4", addr)
			}})
		defer d.Close()
		direct = append(direct, d)
	}
	good := redis.NewClient(&redis.Options{Addr: addrs[1], Protocol: 2, DisableIdentity: true, MaxRetries: -1, PoolSize: 1,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
	defer good.Close()
	retry(t, ctx, "SET through redis-1", func() error { return good.Set(ctx, "hostile-start", "1", 0).Err() })
	rssBefore := serveRSS(t, g.s)

	actx, stop := context.WithTimeout(ctx, attack)
	defer stop()
	var (
		wg       sync.WaitGroup
		acked    atomic.Int64
		conns    atomic.Int64
		goodErrs = make(chan error, 1)
		rssPeak  atomic.Int64
	)
	// The well-behaved client: every acknowledged INCR must be on every replica.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for actx.Err() == nil {
			if err := good.Incr(ctx, "hostile-counter").Err(); err != nil {
				goodErrs <- fmt.Errorf("INCR by a well-behaved client during the attack: %w", err)
				return
			}
			acked.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// Attackers: each picks a shape per connection.
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for actx.Err() == nil {
				hostileConn(actx, addrs[rng.IntN(len(addrs))], rng)
				conns.Add(1)
			}
		}()
	}
	// Slowloris: connections that trickle one byte per second of a frame.
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addrs[i%len(addrs)], 5*time.Second)
			if err != nil {
				return
			}
			defer c.Close()
			frame := []byte("*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$100000\r\n" + strings.Repeat("x", 1000))
			for j := 0; actx.Err() == nil; j++ {
				if _, err := c.Write(frame[j%len(frame) : j%len(frame)+1]); err != nil {
					return
				}
				sleepCtx(actx, time.Second)
			}
		}()
	}
	// 1,000 connections held open at once, each with a partial frame.
	wg.Add(1)
	go func() {
		defer wg.Done()
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for i := 0; i < 1000 && actx.Err() == nil; i++ {
			c, err := net.DialTimeout("tcp", addrs[i%len(addrs)], 5*time.Second)
			if err != nil {
				continue
			}
			_, _ = c.Write([]byte("*2\r\n$4\r\nECHO\r\n$10\r\nabc"))
			held = append(held, c)
		}
		t.Logf("held %d connections open at once", len(held))
		<-actx.Done()
	}()
	// serve's memory while it is attacked (the measurement behind running
	// the data plane in the CRI proxy's process, see docs/hostile-input.md).
	wg.Add(1)
	go func() {
		defer wg.Done()
		for actx.Err() == nil {
			if rss := serveRSS(t, g.s); rss > rssPeak.Load() {
				rssPeak.Store(rss)
			}
			sleepCtx(actx, 500*time.Millisecond)
		}
	}()
	wg.Wait()
	select {
	case err := <-goodErrs:
		t.Fatal(err)
	default:
	}

	// serve is up: its process, its CRI path and every replicated port.
	select {
	case <-g.s.exited:
		t.Fatalf("smr-cri serve exited during the attack; log:\n%s", tail(g.s.log(), 60))
	default:
	}
	if _, err := g.rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatalf("CRI Version after the attack: %v", err)
	}
	for i, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
		retry(t, ctx, "PING through "+g.pods[i].name, func() error { return c.Ping(ctx).Err() })
		_ = c.Close()
	}
	want := acked.Load()
	if err := good.Incr(ctx, "hostile-counter").Err(); err != nil {
		t.Fatalf("INCR after the attack: %v", err)
	}
	want++
	// Equal on every replica: the counter and every key the attack created.
	waitFor(t, ctx, "equal apps on every replica", func() (bool, string) {
		var states []map[string]string
		for _, d := range direct {
			states = append(states, appState(ctx, d))
		}
		for i := 1; i < len(states); i++ {
			if !reflect.DeepEqual(states[i], states[0]) {
				return false, fmt.Sprintf("replica %d has %d keys, replica 1 %d", i+1, len(states[i]), len(states[0]))
			}
		}
		if got := states[0]["hostile-counter"]; got != strconv.FormatInt(want, 10) {
			return false, fmt.Sprintf("hostile-counter=%q, want %d", got, want)
		}
		return true, ""
	})
	rssAfter := serveRSS(t, g.s)
	panics := strings.Count(g.s.log(), "recovered panic")
	t.Logf("hostile input for %v: %d hostile connections, %d acknowledged INCRs; serve RSS %d KiB before, %d KiB peak, %d KiB after; %d recovered panics",
		attack, conns.Load(), want, rssBefore, rssPeak.Load(), rssAfter, panics)
	t.Cleanup(func() {
		if !t.Failed() {
			testcheck.ReportOutcome(t, "hostile-input", "survived")
		}
	})
}

// hostileConn sends one connection's worth of hostile bytes and closes it.
func hostileConn(ctx context.Context, addr string, rng *rand.Rand) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		sleepCtx(ctx, 50*time.Millisecond)
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	var b []byte
	switch rng.IntN(9) {
	case 0: // random bytes
		b = make([]byte, 1+rng.IntN(64<<10))
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
	case 1: // lengths near and beyond the int64 limits
		n := []string{"9223372036854775807", "9223372036854775806", "-9223372036854775808", "-5", "99999999999999999999", "4611686018427387904"}[rng.IntN(6)]
		b = []byte("*2\r\n$3\r\nGET\r\n$" + n + "\r\nkey\r\n")
	case 2: // huge argument counts
		b = []byte("*" + []string{"9223372036854775807", "65537", "-1", "2147483648"}[rng.IntN(4)] + "\r\n$4\r\nPING\r\n")
	case 3: // deep nesting (arrays inside a request array)
		depth := 1 + rng.IntN(100000)
		b = []byte(strings.Repeat("*1\r\n", depth) + "$4\r\nPING\r\n")
	case 4: // a partial frame, then the connection closes
		full := "*3\r\n$3\r\nSET\r\n$7\r\nhostile\r\n$5\r\nvalue\r\n"
		b = []byte(full[:rng.IntN(len(full))])
	case 5: // mutated valid commands, pipelined
		var cmds []byte
		for range 1 + rng.IntN(20) {
			k := "fuzz-" + strconv.Itoa(rng.IntN(50))
			cmds = append(cmds, []byte("*3\r\n$3\r\nSET\r\n$"+strconv.Itoa(len(k))+"\r\n"+k+"\r\n$1\r\nv\r\n")...)
		}
		for range 1 + rng.IntN(4) {
			cmds[rng.IntN(len(cmds))] ^= byte(1 << rng.IntN(8))
		}
		b = cmds
	case 6: // an inline line up to and past the request limit, no newline
		b = []byte(strings.Repeat("A", rng.IntN(2<<20)))
	case 7: // refused and nondeterministic commands
		b = []byte("SPOP s\r\nBLPOP l 0\r\nSUBSCRIBE c\r\nXADD st * f v\r\nEVAL x 0\r\nSET k v EX 1\r\nCLIENT KILL ID 1\r\nDEBUG SEGFAULT\r\nSHUTDOWN\r\nCONFIG SET maxmemory 1\r\nHEXPIRE h 1 FIELDS 1 f\r\n")
	case 8: // HTTP and TLS bytes on the RESP port
		b = []byte([]string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "\r\n\r\n\r\n"}[rng.IntN(3)])
	}
	_, _ = c.Write(b)
	buf := make([]byte, 4096)
	_ = c.SetReadDeadline(time.Now().Add(time.Duration(rng.IntN(300)) * time.Millisecond))
	_, _ = c.Read(buf)
}

// appState is every key of db 0 with its type and value, read from the app.
func appState(ctx context.Context, c *redis.Client) map[string]string {
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		return map[string]string{"error": err.Error()}
	}
	out := map[string]string{}
	for _, k := range keys {
		switch typ := c.Type(ctx, k).Val(); typ {
		case "string":
			out[k] = c.Get(ctx, k).Val()
		case "list":
			out[k] = fmt.Sprint(c.LRange(ctx, k, 0, -1).Val())
		case "stream":
			out[k] = fmt.Sprint(c.XRange(ctx, k, "-", "+").Val())
		case "set":
			m := c.SMembers(ctx, k).Val()
			slices.Sort(m)
			out[k] = fmt.Sprint(m)
		default:
			out[k] = typ
		}
	}
	return out
}

// serveRSS is serve's resident memory in KiB (0 once it exited).
func serveRSS(t testing.TB, s *serveLab) int64 {
	if s.cmd == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}
