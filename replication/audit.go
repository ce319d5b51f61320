package replication

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/appstate"
)

// The ordered audit finds replicas whose app silently differs from the
// others (a write that reached one app around smr-cri, a bug, a lost
// request) and repairs them.
//
//  1. The leader proposes an AUDIT entry (auditLoop, pod.go) every
//     AuditConfig.Every client entries, and at least every Interval while
//     the group has writes. It carries the leader's clock and the voters.
//  2. Every replica applies it in log order, so its app holds exactly the
//     state up to that index; under the serial executor's lock (nothing
//     reaches the app meanwhile) it captures that state: copy-on-write for
//     Redis (a BGSAVE fork, digested off the lock: audit_capture.go), or
//     through the app's protocol (appstate's Digest) as the fallback.
//  3. Each replica proposes its digest as a DIGEST entry naming the
//     AUDIT's index (a copy-on-write digest when it is ready). Digests travel
//     through the log rather than through a read of the other members:
//     the log is the one authenticated channel between members that every
//     member sees in the same order, so every member collects the same
//     reports in the same order and reaches the same verdict, with no new
//     port or RPC.
//  4. When the digests of a majority of the voters agree, every member
//     whose digest differs is diverged (smr_replica_diverged, a log and
//     trace line on every member); the diverged member itself repairs
//     through the one repair path (OnUncertain, cause "divergence": its
//     app is rebuilt from the log). Once every voter reported and no digest
//     has a majority, every member alarms and none repairs.
//
// Keys about to expire: replicas digest at slightly different times, by
// clocks that differ, and Redis expires keys by the local clock, so a key
// expiring in between is there on one replica and gone on another although
// both applied the same writes. The audit fixes one cut-off for all, the
// leader's stamp plus Window: keys expiring by then are left out of every
// digest, and a replica that cannot finish its digest before the cut-off
// by its own clock reports "late" instead of a digest (a key expiring after
// the cut-off is still there on every replica that digests before it).
//
// Cost: the digest reads every key through the app's protocol while the
// group waits (SCAN + TYPE/PEXPIRETIME + a read per key: 0.65 s per 100k
// small Redis keys here, BenchmarkRedisDigest). It is bounded: an app with
// more than MaxKeys keys (HTTP: a state body over MaxBytes), or a digest running past
// Timeout or the cut-off, is not digested; that replica reports "skipped"
// with the reason (said once in the log) and takes no part in the verdict.

// AuditConfig tunes the ordered audit of an executor's group.
type AuditConfig struct {
	// Off turns the audit off on this replica: its leader proposes none,
	// and it reports "skipped" to audits proposed by other members.
	Off bool
	// Interval: an audit at least this often while the group has client
	// writes (default 60s). Every: and after this many client entries
	// (default 10000).
	Interval time.Duration
	Every    uint64
	// Window after the leader's stamp within which replicas digest; keys
	// expiring by then are left out (default 10s).
	Window time.Duration
	// MaxKeys (Redis, default 100000) and MaxBytes (HTTP state body,
	// default 64 MiB) bound the app a replica digests through its protocol
	// (not the copy-on-write capture); Timeout bounds one such digest
	// (default 5s; a copy-on-write digest gets forkTimeoutFactor times it).
	MaxKeys  int
	MaxBytes int64
	Timeout  time.Duration
	// NoCopyOnWrite turns the copy-on-write capture off (audit_capture.go):
	// every audit digests through commands, within MaxKeys.
	NoCopyOnWrite bool
}

// Audit defaults.
const (
	DefaultAuditInterval = 60 * time.Second
	DefaultAuditEvery    = 10000
	DefaultAuditWindow   = 10 * time.Second
	DefaultAuditMaxKeys  = 100000
	DefaultAuditMaxBytes = 64 << 20
	DefaultAuditTimeout  = 5 * time.Second
)

func (c AuditConfig) withDefaults() AuditConfig {
	if c.Interval <= 0 {
		c.Interval = DefaultAuditInterval
	}
	if c.Every == 0 {
		c.Every = DefaultAuditEvery
	}
	if c.Window <= 0 {
		c.Window = DefaultAuditWindow
	}
	if c.MaxKeys <= 0 {
		c.MaxKeys = DefaultAuditMaxKeys
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = DefaultAuditMaxBytes
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultAuditTimeout
	}
	return c
}

// CauseDivergence: the audit found this replica's app different from the
// majority's.
const CauseDivergence = "divergence"

// Audit results (smr_audits_total), as seen by each member for itself.
const (
	AuditAgree      = "agree"       // this replica's digest is the majority's
	AuditDiverged   = "diverged"    // it differs from the majority's
	AuditNoMajority = "no-majority" // every voter reported, no digest has a majority
	AuditSkipped    = "skipped"     // this replica had no digest (too large, late, not serving)
)

// maxAuditRounds bounds the audits whose reports a member still collects.
const maxAuditRounds = 8

// auditor is an executor's audit state. Rounds are guarded by the serial
// executor's lock (they change only in Apply); the counters the leader's
// loop reads are atomic.
type auditor struct {
	cfg    AuditConfig
	rounds map[uint64]*auditRound
	order  []uint64 // round indexes, oldest first
	// apps digest the app when snapshots are off (built at first use).
	apps     []appstate.App
	appsErr  error
	saidSkip map[string]bool // reasons already logged

	// Copy-on-write capture (audit_capture.go): forking is set while a
	// capture runs; forkOffUntil (under mu) holds the command path after a
	// failed capture; saidFallback (under mu) logs each fallback once.
	forking      atomic.Bool
	forkOffUntil time.Time
	keeper       sync.Once // starts keepForkConns
	saidFallback map[string]bool

	orderer atomic.Pointer[Orderer] // where DIGEST reports are proposed

	writes    atomic.Uint64 // client entries applied since the last AUDIT
	lastAudit atomic.Int64  // local time (Unix ns) the last AUDIT was applied, or the executor started
}

type auditRound struct {
	index  uint64
	voters []uint64
	// own is the digest this executor computed at the AUDIT (nil: none in
	// this run). A DIGEST of this member that differs from it was proposed
	// by an earlier run (replayed after a rebuild): it never repairs again.
	own     *DigestReport
	reports map[uint64]DigestReport
	judged  map[uint64]string // last result reported per member
	alarmed bool
}

func newAuditor(cfg AuditConfig) *auditor {
	a := &auditor{cfg: cfg.withDefaults(), rounds: map[uint64]*auditRound{}, saidSkip: map[string]bool{}, saidFallback: map[string]bool{}}
	a.lastAudit.Store(time.Now().UnixNano())
	return a
}

// reportTo sets where this replica proposes its DIGEST entries (the pod's
// orderer, once its group runs).
func (x *Executor) reportTo(o Orderer) {
	x.audit.orderer.Store(&o)
	x.startForkKeeper()
}

// auditDue says whether the leader should propose an audit now.
func (a *auditor) due(now time.Time) bool {
	if a.cfg.Off {
		return false
	}
	w := a.writes.Load()
	return w >= a.cfg.Every || (w > 0 && now.Sub(time.Unix(0, a.lastAudit.Load())) >= a.cfg.Interval)
}

// ProposeAudit orders an audit of the group (the leader's loop calls it;
// tests may call it on any member). voters are the group's members.
func ProposeAudit(ctx context.Context, o Orderer, window time.Duration, voters []uint64) (uint64, error) {
	op := Op{Kind: KindAudit, Audit: &AuditOp{AtMillis: time.Now().UnixMilli(),
		WindowMillis: uint32(min(window.Milliseconds(), 1<<31)), Voters: voters}}
	res, err := o.Propose(ctx, raftcore.Proposal{Data: op.Encode()})
	if err != nil {
		return 0, fmt.Errorf("propose AUDIT: %w", err)
	}
	return res.Index, nil
}

// applyAuditLocked handles an AUDIT or DIGEST entry (under x.mu).
func (x *Executor) applyAuditLocked(e raftcore.Entry, op Op) {
	switch op.Kind {
	case KindAudit:
		x.startAuditLocked(e, op.Audit)
	case KindDigest:
		x.recordDigestLocked(e, *op.Digest)
	}
}

// startAuditLocked digests the app at the AUDIT's index and proposes the
// report. An audit whose window has passed (an old entry replayed after a
// restart or a rebuild) is ignored: its verdict was reached long ago.
func (x *Executor) startAuditLocked(e raftcore.Entry, a *AuditOp) {
	au := x.audit
	au.writes.Store(0)
	au.lastAudit.Store(time.Now().UnixNano())
	cutoff := time.UnixMilli(a.AtMillis).Add(time.Duration(a.WindowMillis) * time.Millisecond)
	if time.Now().After(cutoff) {
		return
	}
	r := &auditRound{index: e.Index, voters: slices.Clone(a.Voters), reports: map[uint64]DigestReport{}, judged: map[uint64]string{}}
	au.rounds[e.Index] = r
	au.order = append(au.order, e.Index)
	for len(au.order) > maxAuditRounds {
		delete(au.rounds, au.order[0])
		au.order = au.order[1:]
	}
	if !slices.Contains(r.voters, x.cfg.Self) {
		return // not a voter (yet): it follows the verdict only
	}
	rep, fc := x.digestLocked(e.Index, cutoff)
	if fc != nil {
		go x.finishFork(r, fc) // reports when the copy-on-write digest is ready
		return
	}
	x.reportDigestLocked(r, rep)
}

// reportDigestLocked records this replica's digest of round r and
// proposes it as a DIGEST entry (under x.mu; the round may already be
// gone from the collected ones: the report still names its AUDIT).
func (x *Executor) reportDigestLocked(r *auditRound, rep DigestReport) {
	au := x.audit
	r.own = &rep
	if rep.Skipped != "" {
		x.m.audit(AuditSkipped)
		if !au.saidSkip[rep.Skipped] {
			au.saidSkip[rep.Skipped] = true
			x.cfg.Log.Warn("audit: this replica's app is not digested; it takes no part in audits while this lasts (said once)",
				"group", x.cfg.Group, "member", x.cfg.Self, "index", rep.Audit, "reason", rep.Skipped)
		}
	}
	o := au.orderer.Load()
	if o == nil {
		return // the group is still starting: this run's first audits are missed
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := (*o).Propose(ctx, raftcore.Proposal{Data: Op{Kind: KindDigest, Digest: &rep}.Encode()}); err != nil {
			x.cfg.Log.Warn("audit: propose this replica's digest", "group", x.cfg.Group, "index", rep.Audit, "err", err)
		}
	}()
}

// digestLocked computes the digest of every replicated port's app, as of
// the entry just applied, bounded by the config and the cut-off; or it
// starts a copy-on-write capture (fc != nil) that reports later.
func (x *Executor) digestLocked(index uint64, cutoff time.Time) (rep DigestReport, fc *forkCapture) {
	rep = DigestReport{Audit: index}
	cfg := x.audit.cfg
	switch {
	case cfg.Off:
		rep.Skipped = "the audit is off on this replica"
		return rep, nil
	case x.broken != nil || x.fenced.Load() || len(x.queue) > 0:
		rep.Skipped = "the replica is " + x.stateLocked()
		return rep, nil
	}
	apps, err := x.digestAppsLocked()
	if err != nil {
		rep.Skipped = err.Error()
		return rep, nil
	}
	t0 := time.Now()
	fc, skipped := x.forkLocked(index, cutoff, apps)
	if fc != nil {
		x.m.capture(capturePathFork, time.Since(t0))
		return rep, fc
	}
	if skipped != "" {
		rep.Skipped = skipped
		return rep, nil
	}
	defer func() { x.m.capture(capturePathCommands, time.Since(t0)) }()
	deadline := time.Now().Add(cfg.Timeout)
	if cutoff.Before(deadline) {
		deadline = cutoff
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	top := sha256.New()
	for i, a := range apps {
		d, err := a.Digest(ctx, appstate.DigestOptions{ExpiringBy: cutoff, MaxKeys: cfg.MaxKeys, MaxBytes: cfg.MaxBytes})
		switch {
		case errors.Is(err, appstate.ErrTooLarge):
			rep.Skipped = "too large to digest: " + err.Error()
			return rep, nil
		case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
			rep.Skipped = fmt.Sprintf("the digest did not finish within %s or before the audit's cut-off", cfg.Timeout)
			return rep, nil
		case err != nil:
			rep.Skipped = fmt.Sprintf("digest of port %d: %v", x.cfg.Ports[i].Number, err)
			return rep, nil
		}
		top.Write(d.Sum[:])
		rep.Keys += d.Keys
	}
	if time.Now().After(cutoff) {
		rep.Skipped = "the digest finished after the audit's cut-off"
		return rep, nil
	}
	copy(rep.Sum[:], top.Sum(nil))
	return rep, nil
}

// errNoDigest: an app without a way to digest it (an HTTP app without
// smr.io/snapshot-path).
var errNoDigest = errors.New("the app has no digest method (HTTP ports need " + "smr.io/snapshot-path)")

// digestAppsLocked returns the app handles: the snapshot ones, or handles
// made for the digest alone (a group whose snapshots are off).
func (x *Executor) digestAppsLocked() ([]appstate.App, error) {
	if x.snap != nil {
		return x.snap.apps, nil
	}
	au := x.audit
	if au.apps == nil && au.appsErr == nil {
		for _, p := range x.cfg.Ports {
			a, err := appstate.New(appstate.Config{Dialer: x.cfg.Dialer, Port: p.Number, Protocol: p.Protocol,
				DialTimeout: x.cfg.DialTimeout})
			if errors.Is(err, appstate.ErrNoSnapshot) {
				au.appsErr = errNoDigest
				break
			}
			if err != nil {
				au.appsErr = fmt.Errorf("port %d: %w", p.Number, err)
				break
			}
			au.apps = append(au.apps, a)
		}
	}
	return au.apps, au.appsErr
}

// recordDigestLocked adds a member's DIGEST to its round and acts on the
// verdict.
func (x *Executor) recordDigestLocked(e raftcore.Entry, rep DigestReport) {
	r := x.audit.rounds[rep.Audit]
	if r == nil || !slices.Contains(r.voters, e.Origin) {
		return // an audit this run did not see live, or not a voter
	}
	r.reports[e.Origin] = rep
	v := decide(r.voters, r.reports)
	for _, id := range v.Agree {
		x.judgeLocked(r, id, AuditAgree, v)
	}
	for _, id := range v.Diverged {
		x.judgeLocked(r, id, AuditDiverged, v)
	}
	if v.NoMajority && !r.alarmed {
		r.alarmed = true
		x.m.audit(AuditNoMajority)
		x.cfg.Log.Error("audit: the replicas' apps differ and no digest has a majority; nothing is repaired",
			"group", x.cfg.Group, "index", r.index, "digests", describeReports(r.voters, r.reports))
		x.cfg.Trace.Write(TraceLine{Kind: "audit", Group: x.cfg.Group, Index: r.index, Origin: x.cfg.Self,
			Op: "NO-MAJORITY " + describeReports(r.voters, r.reports)})
	}
}

// judgeLocked publishes one member's result of a round, once per change.
func (x *Executor) judgeLocked(r *auditRound, id uint64, result string, v verdict) {
	rep := r.reports[id]
	key := result + ":" + hex.EncodeToString(rep.Sum[:])
	if r.judged[id] == key {
		return
	}
	r.judged[id] = key
	self := id == x.cfg.Self
	// A report of this member that this run did not compute (an earlier
	// run's, replayed) says nothing about the app it runs now.
	if self && (r.own == nil || r.own.Skipped != "" || r.own.Sum != rep.Sum) {
		return
	}
	x.m.setDiverged(id, result == AuditDiverged)
	if self {
		x.m.audit(result)
	}
	if result == AuditAgree {
		return
	}
	detail := fmt.Sprintf("audit at index %d: member %d's app digest %s (%d keys) differs from the majority's %s",
		r.index, id, short(rep.Sum), rep.Keys, short(v.Majority))
	x.cfg.Log.Warn("audit: replica diverged", "group", x.cfg.Group, "index", r.index, "member", id,
		"digest", hex.EncodeToString(rep.Sum[:]), "keys", rep.Keys, "majority", hex.EncodeToString(v.Majority[:]), "self", self)
	x.cfg.Trace.Write(TraceLine{Kind: "audit", Group: x.cfg.Group, Index: r.index, Origin: id,
		Op: fmt.Sprintf("DIVERGED member=%d digest=%s majority=%s", id, short(rep.Sum), short(v.Majority))})
	if self {
		x.uncertainLocked(Cause{Kind: CauseDivergence, Detail: detail, Donors: slices.Clone(v.Agree)})
	}
}

// verdict of one audit round.
type verdict struct {
	Majority    [32]byte
	HasMajority bool
	Agree       []uint64 // voters whose digest is the majority's
	Diverged    []uint64 // voters whose digest differs from it
	Skipped     []uint64 // voters that reported no digest
	Missing     []uint64 // voters that did not report yet
	// NoMajority: every voter reported, at least two digests differ, and
	// none has a majority of the voters.
	NoMajority bool
}

// decide is the majority rule: a digest reported by more than half of the
// voters is the group's; every other digest reported is diverged. Skipped
// reports count as voters without a digest (they can prevent a majority,
// never form one). Reports of non-voters are ignored.
func decide(voters []uint64, reports map[uint64]DigestReport) verdict {
	var v verdict
	counts := map[[32]byte]int{}
	for _, id := range voters {
		rep, ok := reports[id]
		switch {
		case !ok:
			v.Missing = append(v.Missing, id)
		case rep.Skipped != "":
			v.Skipped = append(v.Skipped, id)
		default:
			counts[rep.Sum]++
		}
	}
	for sum, n := range counts {
		if n > len(voters)/2 {
			v.Majority, v.HasMajority = sum, true
		}
	}
	if !v.HasMajority {
		v.NoMajority = len(v.Missing) == 0 && len(counts) > 1
		return v
	}
	for _, id := range voters {
		rep, ok := reports[id]
		if !ok || rep.Skipped != "" {
			continue
		}
		if rep.Sum == v.Majority {
			v.Agree = append(v.Agree, id)
		} else {
			v.Diverged = append(v.Diverged, id)
		}
	}
	return v
}

func short(sum [32]byte) string { return hex.EncodeToString(sum[:6]) }

// describeReports lists the reports of a round for a log line.
func describeReports(voters []uint64, reports map[uint64]DigestReport) string {
	s := ""
	for _, id := range voters {
		rep, ok := reports[id]
		switch {
		case !ok:
			s += fmt.Sprintf("%d=missing ", id)
		case rep.Skipped != "":
			s += fmt.Sprintf("%d=skipped ", id)
		default:
			s += fmt.Sprintf("%d=%s ", id, short(rep.Sum))
		}
	}
	if s != "" {
		s = s[:len(s)-1]
	}
	return s
}
