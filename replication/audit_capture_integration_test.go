package replication

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/appstate"
	"github.com/smr-io/smr-cri/replication/framing"
)

// TestAuditCaptureLifecycle: one executor over a real Redis whose saves
// are slow. The audit's copy-on-write capture does not hold the executor:
// entries after the AUDIT are applied while the save runs (an AUDIT
// meanwhile sits its round out), and the late report names its own
// AUDIT's index, with the digest of the state at that index. A save
// already running at the AUDIT makes it digest through commands instead
// (logged once, counted).
func TestAuditCaptureLifecycle(t *testing.T) {
	requireIntegration(t)
	addr := startRedis(t, "--rdb-key-save-delay", "20000") // 20 ms per key
	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"} {
		rc.Set(ctx, k, "v", 0)
	}
	// The digest of the state at the first AUDIT, through commands.
	app, err := appstate.New(appstate.Config{Dialer: &addrDialer{addr: addr}, Port: 6379, Protocol: appstate.ProtoRESP})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	window := uint32(60000)
	want, err := app.Digest(ctx, appstate.DigestOptions{ExpiringBy: at.Add(time.Duration(window) * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	x, err := NewExecutor(ExecutorConfig{Group: "g", Self: 1, Ports: []Port{respPort}, Dialer: &addrDialer{addr: addr},
		Metrics: metrics, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	o := &recordingOrderer{}
	x.reportTo(o)
	prepareForks(t, x)
	audit := func(index uint64) {
		t.Helper()
		op := Op{Kind: KindAudit, Audit: &AuditOp{AtMillis: at.UnixMilli(), WindowMillis: window, Voters: []uint64{1, 2, 3}}}
		if _, err := x.Apply(raftcore.Entry{Index: index, Data: op.Encode()}); err != nil {
			t.Fatal(err)
		}
	}
	audit(1)
	// The save takes 10 keys x 20 ms; the executor goes on meanwhile.
	rc.Set(ctx, "k", "changed after the audit", 0) // not in the state at index 1
	audit(2)
	if x.Applied() != 2 {
		t.Fatalf("applied %d while the capture runs, want 2", x.Applied())
	}
	waitFor(t, "both reports", func() bool { return len(o.reports(t)) == 2 })
	byIndex := map[uint64]DigestReport{}
	for _, r := range o.reports(t) {
		byIndex[r.Audit] = r
	}
	if r := byIndex[2]; !strings.Contains(r.Skipped, "still running") {
		t.Errorf("report of the AUDIT during the capture: %+v, want skipped (capture still running)", r)
	}
	r := byIndex[1]
	if r.Skipped != "" || r.Keys != 10 {
		t.Fatalf("report of the first AUDIT: %+v, want a digest of 10 keys", r)
	}
	wantSum := appDigestSum(want)
	if r.Sum != wantSum {
		t.Errorf("late copy-on-write digest %x, want the state at its AUDIT %x", r.Sum[:6], wantSum[:6])
	}
	if n := gathered(t, reg, "smr_audit_captures_total", map[string]string{"path": "fork"}); n != 1 {
		t.Errorf("fork captures %v, want 1", n)
	}

	// A save of the app's own is running: BGSAVE is refused, the audit
	// digests through commands at once.
	if err := rc.BgSave(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	audit(3)
	waitFor(t, "the third report", func() bool { return len(o.reports(t)) == 3 })
	if r := o.reports(t)[2]; r.Audit != 3 || r.Skipped != "" {
		t.Errorf("report during the app's own save: %+v, want a command digest", r)
	}
	if n := gathered(t, reg, "smr_audit_captures_total", map[string]string{"path": "commands"}); n != 1 {
		t.Errorf("command captures %v, want 1", n)
	}
	if !strings.Contains(logs.String(), "BGSAVE refused") {
		t.Errorf("the fallback's reason is not logged:\n%s", logs.String())
	}
}

// prepareForks readies x's management connections now, as its keeper
// does within a second (a test's first AUDIT may come sooner).
func prepareForks(t *testing.T, x *Executor) {
	t.Helper()
	x.mu.Lock()
	apps, err := x.digestAppsLocked()
	x.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	fds, err := forkDigesters(apps, x.cfg.Ports)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := fd.PrepareFork(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// appDigestSum is the report sum of a single-port group: the hash of the
// port's digest.
func appDigestSum(d appstate.Digest) [32]byte { return sha256.Sum256(d.Sum[:]) }

// TestAuditCaptureFindsAppInNetns: Redis in its own network and PID
// namespaces (as in a pod: it is PID 1 there), reached by NetnsDialer:
// the capture finds its process from the host and digests its dump file
// like the command path; dialed through another namespace it is not found
// (ErrNoFork: the audit falls back).
func TestAuditCaptureFindsAppInNetns(t *testing.T) {
	requireIntegration(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("unshare (util-linux) missing: %v", err)
	}
	p := newLabPod(t)
	dir := t.TempDir()
	cmd := exec.Command("ip", "netns", "exec", p.name, "unshare", "--pid", "--fork", "redis-server", "--port", "6379",
		"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--logfile", dir+"/redis.log")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	dialer := NetnsDialer{Path: p.path}
	waitFor(t, "redis-server in "+p.name, func() bool {
		c, err := dialer.DialApp(context.Background(), 6379)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	ctx := context.Background()
	app, err := appstate.New(appstate.Config{Dialer: dialer, Port: 6379, Protocol: appstate.ProtoRESP})
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialer.DialApp(ctx, 6379)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("SET k v\r\nHSET h f v\r\nINFO server\r\n"))
	buf := make([]byte, 4096)
	_, _ = c.Read(buf)
	c.Close()
	want, err := app.Digest(ctx, appstate.DigestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fd := app.(appstate.ForkDigester)
	defer fd.ReleaseFork()
	if err := fd.PrepareFork(ctx); err != nil {
		t.Fatalf("prepare the copy-on-write capture of a Redis in a pod-like namespace: %v", err)
	}
	fs, err := fd.ForkDigest(ctx)
	if err != nil {
		t.Fatalf("copy-on-write capture of a Redis in a pod-like namespace: %v", err)
	}
	got, err := fs.Digest(ctx, appstate.DigestOptions{})
	if err != nil || got != want || got.Keys != 2 {
		t.Fatalf("copy-on-write digest %s (%v), command digest %s", got, err, want)
	}
	other := newLabPod(t) // reached through a namespace where it does not run
	wrong, err := appstate.New(appstate.Config{Dialer: mixedDialer{dial: dialer, netns: other.path}, Port: 6379, Protocol: appstate.ProtoRESP})
	if err != nil {
		t.Fatal(err)
	}
	if err := wrong.(appstate.ForkDigester).PrepareFork(ctx); !errors.Is(err, appstate.ErrNoFork) {
		t.Fatalf("capture with the wrong namespace: %v, want ErrNoFork", err)
	}
	if _, err := wrong.(appstate.ForkDigester).ForkDigest(ctx); !errors.Is(err, appstate.ErrNoFork) {
		t.Fatalf("capture with the wrong namespace: %v, want ErrNoFork", err)
	}
}

// mixedDialer reaches the app through dial but names another namespace.
type mixedDialer struct {
	dial  NetnsDialer
	netns string
}

func (d mixedDialer) DialApp(ctx context.Context, port int) (net.Conn, error) {
	return d.dial.DialApp(ctx, port)
}
func (d mixedDialer) NetnsPath() string { return d.netns }

// TestAuditCaptureExactUnderWrites: three executors over their own real
// redis-servers apply the same log, in which writes to the audited keys
// (overwrites, deletes, new keys) follow the AUDIT entry at once; each
// replica applies them at its own pace (one with slow saves, so every
// later write lands while its child still writes the dump file, copy-on-
// write). Every replica's copy-on-write digest is the state after the
// AUDIT's predecessors exactly: all three agree, and equal the command
// digest of a Redis that received only those predecessors.
func TestAuditCaptureExactUnderWrites(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	const before, after = 3000, 3000
	resp := func(args ...string) []byte {
		b := fmt.Appendf(nil, "*%d\r\n", len(args))
		for _, a := range args {
			b = fmt.Appendf(b, "$%d\r\n%s\r\n", len(a), a)
		}
		return Op{Kind: KindRequest, Name: args[0], Raw: b}.Encode()
	}
	const session = 0xa0d17
	var log [][]byte
	log = append(log, Op{Kind: KindOpen, Port: respPort.Number, Protocol: framing.ProtoRESP}.Encode())
	for i := range before {
		log = append(log, resp("SET", fmt.Sprintf("key:%d", i), fmt.Sprintf("v%d", i)))
	}
	at := time.Now()
	const window = 60000
	auditIndex := uint64(len(log) + 1)
	log = append(log, Op{Kind: KindAudit, Audit: &AuditOp{AtMillis: at.UnixMilli(), WindowMillis: window, Voters: []uint64{1, 2, 3}}}.Encode())
	for i := range after {
		switch k := fmt.Sprintf("key:%d", i%before); i % 3 {
		case 0:
			log = append(log, resp("SET", k, "changed after the audit"))
		case 1:
			log = append(log, resp("DEL", k))
		default:
			log = append(log, resp("HSET", fmt.Sprintf("new:%d", i), "f", "v"))
		}
	}

	// The oracle: a Redis that received only the AUDIT's predecessors.
	oracle := startRedis(t)
	oc := redis.NewClient(&redis.Options{Addr: oracle})
	defer oc.Close()
	for i := range before {
		oc.Set(ctx, fmt.Sprintf("key:%d", i), fmt.Sprintf("v%d", i), 0)
	}
	oapp, err := appstate.New(appstate.Config{Dialer: &addrDialer{addr: oracle}, Port: 6379, Protocol: appstate.ProtoRESP})
	if err != nil {
		t.Fatal(err)
	}
	want, err := oapp.Digest(ctx, appstate.DigestOptions{ExpiringBy: at.Add(window * time.Millisecond)})
	if err != nil || want.Keys != before {
		t.Fatalf("oracle digest %v (%v), want %d keys", want, err, before)
	}

	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	replicas := []struct {
		redisArgs []string
		pause     time.Duration // between the entries after the AUDIT
	}{
		{nil, 0},
		{[]string{"--rdb-key-save-delay", "200"}, 0}, // 3000 keys x 200 µs: every later write lands during the save
		{nil, 50 * time.Microsecond},
	}
	orderers := make([]*recordingOrderer, len(replicas))
	var wg sync.WaitGroup
	for r, rep := range replicas {
		x, err := NewExecutor(ExecutorConfig{Group: "g", Self: uint64(r + 1), Ports: []Port{respPort},
			Dialer: &addrDialer{addr: startRedis(t, rep.redisArgs...)}, Metrics: metrics})
		if err != nil {
			t.Fatal(err)
		}
		defer x.Close()
		orderers[r] = &recordingOrderer{}
		x.reportTo(orderers[r])
		prepareForks(t, x)
		wg.Go(func() {
			for i, data := range log {
				idx := uint64(i + 1)
				if _, err := x.Apply(raftcore.Entry{Group: "g", Index: idx, Session: session, Seq: idx, Origin: 1, Data: data}); err != nil {
					t.Errorf("replica %d: apply %d: %v", r+1, idx, err)
					return
				}
				if idx > auditIndex && rep.pause > 0 {
					time.Sleep(rep.pause)
				}
			}
		})
	}
	wg.Wait()
	for r, o := range orderers {
		waitFor(t, fmt.Sprintf("replica %d's report", r+1), func() bool { return len(o.reports(t)) == 1 })
		got := o.reports(t)[0]
		if got.Audit != auditIndex || got.Skipped != "" || got.Keys != before || got.Sum != appDigestSum(want) {
			t.Errorf("replica %d reported %+v (sum %x), want the state at index %d: %d keys, sum %x",
				r+1, got, got.Sum[:6], auditIndex, before, appDigestSum(want))
		}
	}
	if n := gathered(t, reg, "smr_audit_captures_total", map[string]string{"path": "fork"}); n != 3 {
		t.Errorf("copy-on-write captures %v, want 3 (one per replica)", n)
	}
}
