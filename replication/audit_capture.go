package replication

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smr-io/smr-cri/replication/appstate"
)

// Copy-on-write capture of the audit. Digesting the app through its
// protocol under the serial executor's lock stalls the group for as long as
// reading every key takes (0.65 s per 100k small Redis keys). Instead, at
// the AUDIT entry the executor asks each Redis for BGSAVE on its own
// management connection: Redis forks at exactly that point of its command
// stream, so the child's dump file holds the state between the AUDIT's two
// neighbouring entries, and the group waits only for the fork: the
// management connection is kept open, authenticated and bound to the
// located dump file by a keeper goroutine off the lock (keepForkConns:
// checked every forkKeepEvery without a round trip, re-dialed when the app
// closed it or restarted), so the stall is one round trip of
// INFO persistence + BGSAVE, never a dial. Off the lock, a goroutine waits for the save, reads the dump file through the
// host's view of the container (/proc/<pid>/cwd), and digests it with the
// command path's own canonical hashing (appstate.DigestRDB; the
// integration tests check the two digests equal for every type and
// encoding). The DIGEST report is proposed when it is ready: it names its
// AUDIT's index, so a late report still belongs to its round, and the
// executor applies entries meanwhile.
//
// Why BGSAVE rather than a replica (SYNC/PSYNC) stream or a fork of our
// own: BGSAVE is the one fork a client can ask for at a point of the
// command stream it controls (the executor's connection is idle and the
// executor holds the lock, so nothing else reaches the app); a replication
// stream would need a replica's handshake and buffer the whole RDB in our
// memory; the file is already on the node's disk.
//
// The command digest stays the fallback, bounded by MaxKeys, when the
// capture is impossible at the audit: the app is not Redis (HTTP), BGSAVE is
// refused (a save or AOF rewrite of the app's own is running: another fork
// would not be at the audit's position), the app's process or directory is
// not visible from this host, or the copy-on-write capture is turned off
// (AuditConfig.NoCopyOnWrite). A capture that fails after the fork (the
// save failed, another save replaced the file, a module type in the file)
// loses that round (this replica reports "skipped") and the next audits
// use the command digest for forkRetryAfter. Each fallback is logged once
// per reason and counted in smr_audit_captures_total{path="commands"}.

// forkRetryAfter: after a copy-on-write capture failed, audits use the
// command digest for this long before trying again.
const forkRetryAfter = 10 * time.Minute

// forkKeepEvery: how often the keeper checks the kept management
// connections (a non-blocking peek, no round trip) and re-dials a broken
// one.
const forkKeepEvery = time.Second

// forkTimeoutFactor: a copy-on-write digest may take this many times
// AuditConfig.Timeout (it stalls no one; it only delays the report).
const forkTimeoutFactor = 12

// Capture paths (smr_audit_captures_total{path}).
const (
	capturePathFork     = "fork"
	capturePathCommands = "commands"
)

// captureMetrics count the audit's capture paths and the group's stall.
type captureMetrics struct {
	captures *prometheus.CounterVec
	stall    *prometheus.HistogramVec
}

func newCaptureMetrics(reg prometheus.Registerer) (*captureMetrics, error) {
	c := &captureMetrics{
		captures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_audit_captures_total",
			Help: "Audit captures of this replica's app by path: fork (copy-on-write BGSAVE, the group waits for the fork only) or commands (the fallback: every key read while the group waits)."},
			[]string{"group", "path"}),
		stall: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smr_audit_stall_seconds",
			Help:    "How long an audit's capture held the serial executor (the group's stall), by path.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}, []string{"group", "path"}),
	}
	for _, col := range []prometheus.Collector{c.captures, c.stall} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register audit capture metrics: %w", err)
		}
	}
	return c, nil
}

func (g *groupMetrics) capture(path string, stall time.Duration) {
	if g == nil || g.m.capture == nil {
		return
	}
	g.m.capture.captures.WithLabelValues(g.group, path).Inc()
	g.m.capture.stall.WithLabelValues(g.group, path).Observe(stall.Seconds())
}

// forkCapture is a copy-on-write capture in progress: one forked state per
// replicated port, all at the same log position.
type forkCapture struct {
	index  uint64
	cutoff time.Time
	states []*appstate.ForkedState
	ports  []int
}

// forkLocked starts the copy-on-write capture at the entry just applied
// (under x.mu). nil and "": the caller digests through commands instead;
// a skipped reason: this replica sits this round out.
func (x *Executor) forkLocked(index uint64, cutoff time.Time, apps []appstate.App) (fc *forkCapture, skipped string) {
	au := x.audit
	if au.cfg.NoCopyOnWrite {
		return nil, ""
	}
	if au.forking.Load() {
		return nil, "the previous audit's copy-on-write capture is still running"
	}
	if time.Now().Before(au.forkOffUntil) {
		return nil, ""
	}
	x.startForkKeeper()
	fds, err := forkDigesters(apps, x.cfg.Ports)
	if err != nil {
		x.fallbackOnce(err.Error())
		return nil, ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), au.cfg.Timeout)
	defer cancel()
	fc = &forkCapture{index: index, cutoff: cutoff}
	for i, fd := range fds {
		st, err := fd.ForkDigest(ctx)
		if err != nil {
			for _, s := range fc.states {
				s.Close() // their saves finish on their own; nothing reads them
			}
			x.fallbackOnce(fmt.Sprintf("port %d: %v", x.cfg.Ports[i].Number, err))
			return nil, ""
		}
		fc.states = append(fc.states, st)
		fc.ports = append(fc.ports, x.cfg.Ports[i].Number)
	}
	au.forking.Store(true)
	return fc, ""
}

// forkDigesters returns the apps' copy-on-write captures, or why there is
// none.
func forkDigesters(apps []appstate.App, ports []Port) ([]appstate.ForkDigester, error) {
	fds := make([]appstate.ForkDigester, len(apps))
	for i, a := range apps {
		fd, ok := a.(appstate.ForkDigester)
		if !ok {
			return nil, fmt.Errorf("port %d: the app has no copy-on-write capture (only Redis has)", ports[i].Number)
		}
		fds[i] = fd
	}
	return fds, nil
}

// startForkKeeper starts keepForkConns once (when the group runs, or at
// the first audit of an executor that reports nowhere yet).
func (x *Executor) startForkKeeper() {
	au := x.audit
	if au.cfg.Off || au.cfg.NoCopyOnWrite {
		return
	}
	au.keeper.Do(func() { go x.keepForkConns() })
}

// keepForkConns keeps every app's management connection ready off the
// executor's lock (the lock is taken once, to find the apps), so that an
// AUDIT never dials; it closes them when the executor closes.
func (x *Executor) keepForkConns() {
	x.mu.Lock()
	apps, err := x.digestAppsLocked()
	x.mu.Unlock()
	if err != nil {
		return // said by the audit itself
	}
	fds, err := forkDigesters(apps, x.cfg.Ports)
	if err != nil {
		return // the audit digests through commands and says so
	}
	defer func() {
		for _, fd := range fds {
			fd.ReleaseFork()
		}
	}()
	tick := time.NewTicker(forkKeepEvery)
	defer tick.Stop()
	said := map[string]bool{}
	for {
		for i, fd := range fds {
			ctx, cancel := context.WithTimeout(context.Background(), x.audit.cfg.Timeout)
			err := fd.PrepareFork(ctx)
			cancel()
			if err != nil && !said[err.Error()] {
				said[err.Error()] = true
				x.cfg.Log.Info("audit: the copy-on-write capture's management connection is not ready; retried every second (said once per reason)",
					"group", x.cfg.Group, "member", x.cfg.Self, "port", x.cfg.Ports[i].Number, "err", err)
			}
		}
		select {
		case <-x.closed:
			return
		case <-tick.C:
		}
	}
}

// fallbackOnce logs, once per reason, why an audit digests through
// commands.
func (x *Executor) fallbackOnce(reason string) {
	au := x.audit
	if au.saidFallback[reason] {
		return
	}
	au.saidFallback[reason] = true
	x.cfg.Log.Info("audit: digesting through commands instead of a copy-on-write capture (said once)",
		"group", x.cfg.Group, "member", x.cfg.Self, "reason", reason, "max_keys", au.cfg.MaxKeys)
}

// finish digests the forked states (off the lock), then records and
// proposes the report under the lock.
func (x *Executor) finishFork(r *auditRound, fc *forkCapture) {
	au := x.audit
	ctx, cancel := context.WithTimeout(context.Background(), forkTimeoutFactor*au.cfg.Timeout)
	defer cancel()
	rep := DigestReport{Audit: fc.index}
	top := sha256.New()
	var failed error
	for i, st := range fc.states {
		if failed != nil {
			st.Close()
			continue
		}
		d, err := st.Digest(ctx, appstate.DigestOptions{ExpiringBy: fc.cutoff})
		if err != nil {
			failed = fmt.Errorf("port %d: %w", fc.ports[i], err)
			continue
		}
		top.Write(d.Sum[:])
		rep.Keys += d.Keys
	}
	au.forking.Store(false)
	x.mu.Lock()
	defer x.mu.Unlock()
	if failed != nil {
		rep.Skipped = "the copy-on-write capture failed: " + failed.Error()
		if errors.Is(failed, context.DeadlineExceeded) {
			rep.Skipped = fmt.Sprintf("the copy-on-write capture did not finish within %s", forkTimeoutFactor*au.cfg.Timeout)
		}
		au.forkOffUntil = time.Now().Add(forkRetryAfter)
		x.cfg.Log.Warn("audit: copy-on-write capture failed; this round is skipped and audits digest through commands for a while",
			"group", x.cfg.Group, "member", x.cfg.Self, "index", fc.index, "retry_after", forkRetryAfter, "err", failed)
	} else {
		copy(rep.Sum[:], top.Sum(nil))
	}
	x.reportDigestLocked(r, rep)
}
