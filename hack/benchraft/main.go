// Command benchraft compares raftcore (three raftnode processes on loopback,
// real disk WAL) with a three-member etcd cluster (Debian's etcd-server)
// driven by go.etcd.io/etcd/client/v3: the same payload size and the same
// numbers of concurrent proposers, side by side in one run. It ends with:
//
//	raft: commits/s at 64 proposers smr=X etcd=Y ratio=R; p50 commit latency at 1 proposer smr=A ms etcd=B ms
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/procfs"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
	"github.com/smr-io/smr-cri/test/lab/raft/raftnode"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/grpclog"
)

func main() {
	// Keep the output to the result lines: the summary must be the last
	// line, and client reconnect chatter during shutdown is not a result.
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard))
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchraft:", err)
		os.Exit(1)
	}
}

type config struct {
	raftnode, etcd, dir string
	duration            time.Duration
	levels              []int
	payload             int
	profile             string
	profileAt           int
	smrOnly             bool
	rounds              int
	tlsCompare          bool
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("benchraft", flag.ContinueOnError)
	var c config
	var levels string
	fs.StringVar(&c.raftnode, "raftnode", "", "path to the raftnode binary")
	fs.StringVar(&c.etcd, "etcd", "/usr/bin/etcd", "path to etcd")
	fs.StringVar(&c.dir, "dir", "", "work dir for data (default: a temp dir on disk)")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "measurement time per concurrency level")
	fs.StringVar(&levels, "proposers", "1,16,64", "concurrency levels")
	fs.IntVar(&c.payload, "payload", 128, "payload bytes per proposal")
	fs.StringVar(&c.profile, "profile", "", "write a CPU profile of the smr leader at -profile-at proposers to this file")
	fs.IntVar(&c.profileAt, "profile-at", 64, "concurrency level to profile")
	fs.BoolVar(&c.smrOnly, "smr-only", false, "skip etcd (profiling)")
	fs.IntVar(&c.rounds, "rounds", 3, "alternating measurement rounds per level (median kept)")
	fs.BoolVar(&c.tlsCompare, "tls-compare", false, "instead of etcd, run a second raftcore cluster with mutual TLS (smr-tls) beside the plaintext one and report the TLS cost")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.rounds < 1 {
		return errors.New("-rounds must be >= 1")
	}
	if c.raftnode == "" {
		return errors.New("-raftnode is required")
	}
	for _, s := range strings.Split(levels, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return fmt.Errorf("bad -proposers entry %q", s)
		}
		c.levels = append(c.levels, n)
	}
	if !slices.Contains(c.levels, 1) || !slices.Contains(c.levels, 64) {
		return errors.New("-proposers must include 1 and 64 (the summary line uses them)")
	}
	if c.dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "benchraft-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		c.dir = d
	}
	smr, err := startSMR(ctx, c, "smr", "")
	if err != nil {
		return fmt.Errorf("smr: %w", err)
	}
	defer smr.stop()
	systems := []*system{smr}
	if c.tlsCompare {
		// Same cluster shape, raft traffic over mutual TLS (the default
		// outside benchmarks); measured alternately with the plaintext one.
		pkiDir := filepath.Join(c.dir, "pki")
		if _, _, err := pki.EnsureCADir(pkiDir); err != nil {
			return err
		}
		sec, err := startSMR(ctx, c, "smr-tls", pkiDir)
		if err != nil {
			return fmt.Errorf("smr-tls: %w", err)
		}
		defer sec.stop()
		systems = append(systems, sec)
	}
	if !c.smrOnly && !c.tlsCompare {
		etcd, err := startEtcd(ctx, c)
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		defer etcd.stop()
		systems = append(systems, etcd)
	}
	// Both clusters run side by side; measurements alternate between them
	// (rounds) and the median is kept, so load from other processes on the
	// machine hits both alike.
	res := map[string]map[int]result{}
	for _, n := range c.levels {
		runs := map[string][]result{}
		for round := 0; round < c.rounds; round++ {
			for _, sys := range systems {
				if sys.profile != nil && n == c.profileAt && round == 0 {
					go sys.profile(c.duration)
				}
				r := load(ctx, n, c.duration, sys.pids, sys.proposer(n))
				runs[sys.name] = append(runs[sys.name], r)
			}
		}
		for _, sys := range systems {
			m := median(runs[sys.name])
			report(out, sys.name, n, m)
			if res[sys.name] == nil {
				res[sys.name] = map[int]result{}
			}
			res[sys.name][n] = m
		}
	}
	if c.tlsCompare {
		p, s := res["smr"][64].rate, res["smr-tls"][64].rate
		pc, sc := res["smr"][64].cpuPerOp, res["smr-tls"][64].cpuPerOp
		fmt.Fprintf(out, "raft-tls: commits/s at 64 proposers plaintext=%.0f mtls=%.0f tls-cost=%.1f%%; serverCPU/commit at 64 plaintext=%dus mtls=%dus; p50 at 1 proposer plaintext=%.2f ms mtls=%.2f ms\n",
			p, s, 100*(p-s)/p, pc.Microseconds(), sc.Microseconds(), ms(res["smr"][1].p50), ms(res["smr-tls"][1].p50))
		return nil
	}
	if c.smrOnly {
		return nil
	}
	s, e := res["smr"], res["etcd"]
	fmt.Fprintf(out, "raft: commits/s at 64 proposers smr=%.0f etcd=%.0f ratio=%.2f; p50 commit latency at 1 proposer smr=%.2f ms etcd=%.2f ms\n",
		s[64].rate, e[64].rate, s[64].rate/e[64].rate, ms(s[1].p50), ms(e[1].p50))
	return nil
}

// median picks, per field, the median over rounds (max for RSS).
func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	out := result{
		rate:     pick(func(r result) float64 { return r.rate }),
		p50:      time.Duration(pick(func(r result) float64 { return float64(r.p50) })),
		p99:      time.Duration(pick(func(r result) float64 { return float64(r.p99) })),
		cpuPerOp: time.Duration(pick(func(r result) float64 { return float64(r.cpuPerOp) })),
		maxRSS:   make([]int64, len(rs[0].maxRSS)),
	}
	for _, r := range rs {
		out.errors += r.errors
		for i, v := range r.maxRSS {
			out.maxRSS[i] = max(out.maxRSS[i], v)
		}
	}
	return out
}

// system is one running 3-member cluster under test.
type system struct {
	name     string
	pids     []int
	proposer func(n int) proposeFunc
	profile  func(d time.Duration) // optional
	stop     func()
}

var sessions atomic.Uint64

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

type result struct {
	rate     float64
	p50, p99 time.Duration
	errors   int64
	maxRSS   []int64       // KiB per process, at this level
	cpuPerOp time.Duration // CPU time of all server processes per commit
}

// proposeFunc proposes one payload through proposer p.
type proposeFunc func(ctx context.Context, p int, seq uint64) error

// load runs n proposers for d and measures throughput and latency.
func load(ctx context.Context, n int, d time.Duration, pids []int, propose proposeFunc) result {
	var (
		mu    sync.Mutex
		lats  []time.Duration
		count atomic.Int64
		errs  atomic.Int64
		wg    sync.WaitGroup
	)
	// Warm up connections outside the measurement.
	for p := 0; p < n; p++ {
		_ = propose(ctx, p, 0)
	}
	rssDone := make(chan []int64)
	lctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	go func() { rssDone <- sampleRSS(lctx, pids) }()
	cpu0 := cpuTime(pids)
	start := time.Now()
	for p := 0; p < n; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			for seq := uint64(1); lctx.Err() == nil; seq++ {
				t0 := time.Now()
				if err := propose(ctx, p, seq); err != nil {
					errs.Add(1)
					continue
				}
				local = append(local, time.Since(t0))
				count.Add(1)
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lats)
	r := result{rate: float64(count.Load()) / elapsed.Seconds(), errors: errs.Load(), maxRSS: <-rssDone}
	if c := count.Load(); c > 0 {
		r.cpuPerOp = (cpuTime(pids) - cpu0) / time.Duration(c)
	}
	if len(lats) > 0 {
		r.p50, r.p99 = lats[len(lats)/2], lats[len(lats)*99/100]
	}
	return r
}

func sampleRSS(ctx context.Context, pids []int) []int64 {
	max := make([]int64, len(pids))
	for {
		for i, pid := range pids {
			if v := procfs.RSSKiB(pid); v > max[i] {
				max[i] = v
			}
		}
		select {
		case <-ctx.Done():
			return max
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cpuTime sums user+system CPU of the processes (in clock ticks of 10ms:
// read it over many operations).
func cpuTime(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		if p, err := procfs.Read(pid); err == nil {
			total += p.CPU
		}
	}
	return total
}

func report(out io.Writer, name string, n int, r result) {
	rss := make([]string, len(r.maxRSS))
	for i, v := range r.maxRSS {
		rss[i] = fmt.Sprintf("%.1f", float64(v)/1024)
	}
	fmt.Fprintf(out, "%-4s proposers=%-3d commits/s=%-8.0f p50=%.2fms p99=%.2fms errors=%d serverCPU/commit=%dus maxRSS(MiB)=[%s]\n",
		name, n, r.rate, ms(r.p50), ms(r.p99), r.errors, r.cpuPerOp.Microseconds(), strings.Join(rss, " "))
}

type procs []*exec.Cmd

// launched is what a start function has set up so far: its processes and the
// clients to close, undone together on failure or at the end of the run.
type launched struct {
	procs   procs
	closers []func() error
}

func (l *launched) stop() {
	for _, f := range l.closers {
		f()
	}
	l.procs.stop()
}

func (ps procs) stop() {
	for _, p := range ps {
		p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range ps {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
}

func (ps procs) pids() []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.Process.Pid
	}
	return out
}

// ---------------------------------------------------------------- smr

// startSMR starts three raftnode processes: plaintext raft when pkiDir is
// "" (as etcd runs here), else mutual TLS with the CA in pkiDir.
func startSMR(ctx context.Context, c config, name, pkiDir string) (_ *system, err error) {
	var parts, httpAddrs, grpcAddrs []string
	addrs, err := freeport.Addrs(9)
	if err != nil {
		return nil, err
	}
	for id := 1; id <= 3; id++ {
		a := addrs[3*(id-1):]
		parts = append(parts, fmt.Sprintf("%d=%s", id, a[0]))
		httpAddrs = append(httpAddrs, a[1])
		grpcAddrs = append(grpcAddrs, a[2])
	}
	var l launched
	defer func() {
		if err != nil {
			l.stop()
		}
	}()
	for id := 1; id <= 3; id++ {
		sec := []string{"-insecure-raft"}
		if pkiDir != "" {
			sec = []string{"-pki-dir", pkiDir}
		}
		cmd := exec.Command(c.raftnode, append([]string{"-id", strconv.Itoa(id), "-peers", strings.Join(parts, ","),
			"-http", httpAddrs[id-1], "-grpc", grpcAddrs[id-1], "-data", filepath.Join(c.dir, fmt.Sprintf("%s%d", name, id)), fmt.Sprintf("-pprof=%v", c.profile != "")}, sec...)...)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		l.procs = append(l.procs, cmd)
		if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
			return nil, fmt.Errorf("raftnode %d did not start: %w", id, err)
		}
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}}
	// Proposers use the gRPC client API: one connection per member, as the
	// etcd side uses one clientv3 connection per endpoint.
	clients := make([]*raftnode.GRPCClient, 3)
	for i, a := range grpcAddrs {
		cl, err := raftnode.DialGRPC(a)
		if err != nil {
			return nil, err
		}
		l.closers = append(l.closers, cl.Close)
		clients[i] = cl
	}
	lead, err := smrLeader(ctx, hc, httpAddrs)
	if err != nil {
		return nil, err
	}
	value := strings.Repeat("v", c.payload)
	sys := &system{name: name, pids: l.procs.pids(), stop: l.stop}
	sys.proposer = func(n int) proposeFunc {
		base := sessions.Add(uint64(n)) - uint64(n)
		return func(ctx context.Context, p int, seq uint64) error {
			// Proposers spread over the members starting at the leader
			// (the same placement as for etcd); each has its own session.
			cl := clients[(lead+p)%3]
			op := kvtest.Op{Kind: "put", Key: fmt.Sprintf("k%d", p), Value: value}
			session := base + uint64(p) + 1
			if seq == 0 {
				session = 0 // warm-up: no session
			}
			_, err := cl.Propose(ctx, raftcore.Proposal{Session: session, Seq: seq, Data: op.Encode()})
			return err
		}
	}
	if c.profile != "" {
		sys.profile = func(d time.Duration) { profile(hc, httpAddrs[lead], c.profile, d) }
	}
	return sys, nil
}

func smrLeader(ctx context.Context, hc *http.Client, addrs []string) (int, error) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for i, a := range addrs {
			resp, err := hc.Get("http://" + a + "/status")
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), `"State":"StateLeader"`) {
				return i, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0, errors.New("no raftnode leader after 20s")
}

// ---------------------------------------------------------------- etcd

func startEtcd(ctx context.Context, c config) (_ *system, err error) {
	var peerURLs, clientURLs, initial []string
	addrs, err := freeport.Addrs(6)
	if err != nil {
		return nil, err
	}
	for id := 1; id <= 3; id++ {
		p, cl := addrs[2*(id-1)], addrs[2*(id-1)+1]
		peerURLs = append(peerURLs, "http://"+p)
		clientURLs = append(clientURLs, "http://"+cl)
		initial = append(initial, fmt.Sprintf("e%d=http://%s", id, p))
	}
	var l launched
	defer func() {
		if err != nil {
			l.stop()
		}
	}()
	for i := range 3 {
		cmd := exec.Command(c.etcd,
			"--name", fmt.Sprintf("e%d", i+1),
			"--data-dir", filepath.Join(c.dir, fmt.Sprintf("etcd%d", i+1)),
			"--listen-peer-urls", peerURLs[i], "--initial-advertise-peer-urls", peerURLs[i],
			"--listen-client-urls", clientURLs[i], "--advertise-client-urls", clientURLs[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "benchraft", "--logger", "zap", "--log-level", "error")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		l.procs = append(l.procs, cmd)
	}
	clients := make([]*clientv3.Client, 3)
	for i, u := range clientURLs {
		cl, err := clientv3.New(clientv3.Config{Endpoints: []string{u}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return nil, err
		}
		l.closers = append(l.closers, cl.Close)
		clients[i] = cl
	}
	lead, err := etcdLeader(ctx, clients, clientURLs)
	if err != nil {
		return nil, err
	}
	value := strings.Repeat("v", c.payload)
	sys := &system{name: "etcd", pids: l.procs.pids(), stop: l.stop}
	sys.proposer = func(int) proposeFunc {
		return func(ctx context.Context, p int, _ uint64) error {
			_, err := clients[(lead+p)%3].Put(ctx, fmt.Sprintf("k%d", p), value)
			return err
		}
	}
	return sys, nil
}

func etcdLeader(ctx context.Context, clients []*clientv3.Client, urls []string) (int, error) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for i, cl := range clients {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := cl.Status(sctx, strings.TrimPrefix(urls[i], ""))
			cancel()
			if err == nil && st.Header.GetMemberId() == st.Leader {
				return i, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, errors.New("no etcd leader after 30s")
}

func profile(hc *http.Client, addr, path string, d time.Duration) {
	resp, err := hc.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, max(1, int(d.Seconds())-1)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
}
