package replication

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the replication metrics, labelled by group. A nil *Metrics is
// valid and records nothing.
type Metrics struct {
	proposals     *prometheus.CounterVec
	proposalErrs  *prometheus.CounterVec
	commits       *prometheus.CounterVec
	reads         *prometheus.CounterVec
	badRequests   *prometheus.CounterVec
	applyLagH     *prometheus.HistogramVec
	execDuration  *prometheus.HistogramVec
	appliedIndex  *prometheus.GaugeVec
	sessions      *prometheus.GaugeVec
	queue         *prometheus.GaugeVec
	leaderChanges *prometheus.CounterVec
	leader        *prometheus.GaugeVec
	connPanics    *prometheus.CounterVec
	replicaState  *prometheus.GaugeVec
	repairs       *prometheus.CounterVec
	audits        *prometheus.CounterVec
	diverged      *prometheus.GaugeVec
	capture       *captureMetrics // audit_capture.go
	pipelineRuns  *prometheus.HistogramVec

	mu           sync.Mutex
	lastLeader   map[string]uint64
	divergedSeen map[string]bool // group/member whose smr_replica_diverged exists
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	g := []string{"group"}
	latency := prometheus.ExponentialBuckets(0.0001, 2, 18) // 100us .. 13s
	m := &Metrics{
		proposals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_proposals_total",
			Help: "Entries proposed by this replica, by kind (OPEN, REQUEST, CLOSE, RESET)."}, []string{"group", "kind"}),
		proposalErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_proposal_errors_total",
			Help: "Proposals and read barriers that failed after retries."}, g),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_commits_total",
			Help: "Committed entries applied to the local app, by kind."}, []string{"group", "kind"}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_reads_total",
			Help: "Read-only requests served locally after a ReadIndex."}, g),
		badRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_bad_requests_total",
			Help: "Client requests and connections refused, by reason (malformed, too_large, unsupported, reserved_path, client_budget)."}, []string{"group", "reason"}),
		applyLagH: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smr_apply_lag_seconds",
			Help: "From proposal to local apply on the proposing replica.", Buckets: latency}, g),
		execDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smr_app_exec_seconds",
			Help: "App round trip of one applied entry.", Buckets: latency}, g),
		appliedIndex: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_applied_index",
			Help: "Last log index applied to the local app."}, g),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_sessions",
			Help: "Open replicated client sessions on this replica (sessions in the same connection state share an app connection)."}, g),
		queue: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_app_queue_entries",
			Help: "Committed entries waiting for an unreachable app."}, g),
		leaderChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_leader_changes_total",
			Help: "Leader changes observed by this replica."}, g),
		leader: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_leader",
			Help: "Current leader member ID as seen here (0 = none)."}, g),
		replicaState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_replica_state",
			Help: "1 for this replica's current state (serving, rebuilding, broken), 0 for the others."}, []string{"group", "state"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_repairs_total",
			Help: "Repairs of this replica's app, by cause and result (ok, failed)."}, []string{"group", "cause", "result"}),
		audits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_audits_total",
			Help: "Ordered audits of the app states as judged for this replica, by result (agree, diverged, no-majority, skipped)."}, []string{"group", "result"}),
		diverged: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_replica_diverged",
			Help: "1 while the last audit found this member's app different from the majority's, 0 once an audit agrees (as seen by this replica, for every member it judged)."}, []string{"group", "member"}),
		connPanics: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_connection_panics_total",
			Help: "Panics recovered while serving one connection (path=client: a client connection's handler; path=app_response: reading an app response); only that connection ended."}, []string{"group", "path"}),
		pipelineRuns: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smr_pipeline_run_entries",
			Help:    "Entries written to one app connection before their responses were read (the ordered pipeline's depth); 1 means one round trip per entry.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 8)}, g),
		lastLeader: map[string]uint64{}, divergedSeen: map[string]bool{},
	}
	for _, c := range []prometheus.Collector{m.proposals, m.proposalErrs, m.commits, m.reads, m.badRequests,
		m.applyLagH, m.execDuration, m.appliedIndex, m.sessions, m.queue, m.leaderChanges, m.leader, m.replicaState, m.repairs, m.audits, m.diverged, m.connPanics, m.pipelineRuns} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register replication metrics: %w", err)
		}
	}
	var err error
	if m.capture, err = newCaptureMetrics(reg); err != nil {
		return nil, err
	}
	return m, nil
}

// groupMetrics holds one group's metric children, resolved once so the
// per-request path does no label hashing. A nil *groupMetrics records nothing.
type groupMetrics struct {
	group                         string
	m                             *Metrics
	proposals, commits            [KindReset + 1]prometheus.Counter
	proposalErrs, reads           prometheus.Counter
	applyLag, exec, runEntries    prometheus.Observer
	appliedIndex, sessions, queue prometheus.Gauge
}

func (m *Metrics) forGroup(group string) *groupMetrics {
	if m == nil {
		return nil
	}
	g := &groupMetrics{group: group, m: m,
		proposalErrs: m.proposalErrs.WithLabelValues(group), reads: m.reads.WithLabelValues(group),
		applyLag: m.applyLagH.WithLabelValues(group), exec: m.execDuration.WithLabelValues(group),
		runEntries:   m.pipelineRuns.WithLabelValues(group),
		appliedIndex: m.appliedIndex.WithLabelValues(group), sessions: m.sessions.WithLabelValues(group),
		queue: m.queue.WithLabelValues(group)}
	for k := KindOpen; k <= KindReset; k++ {
		g.proposals[k] = m.proposals.WithLabelValues(group, k.String())
		g.commits[k] = m.commits.WithLabelValues(group, k.String())
	}
	// The known label values exist from the start at 0, so a dashboard and
	// an alert over increase() see the first repair, audit or panic.
	for _, cause := range []string{CauseInFlight, CauseContainerRestart, CauseContainerExit, CauseQueueOverflow, CauseSessionBroken, CauseDivergence} {
		for _, result := range []string{"ok", "failed"} {
			m.repairs.WithLabelValues(group, cause, result)
		}
	}
	for _, result := range []string{AuditAgree, AuditDiverged, AuditNoMajority, AuditSkipped} {
		m.audits.WithLabelValues(group, result)
	}
	for _, path := range []string{panicPathClient, panicPathAppResponse} {
		m.connPanics.WithLabelValues(group, path)
	}
	return g
}

// initDiverged publishes smr_replica_diverged{member}=0 the first time this
// process runs that member; a member rebuilt after a divergence keeps its
// 1 until an audit agrees.
func (g *groupMetrics) initDiverged(member uint64) {
	if g == nil {
		return
	}
	key := g.group + "/" + strconv.FormatUint(member, 10)
	g.m.mu.Lock()
	seen := g.m.divergedSeen[key]
	g.m.divergedSeen[key] = true
	g.m.mu.Unlock()
	if !seen {
		g.setDiverged(member, false)
	}
}

func validKind(k Kind) bool { return k >= KindOpen && k <= KindReset }

func (g *groupMetrics) proposal(k Kind) {
	if g != nil && validKind(k) {
		g.proposals[k].Inc()
	}
}

func (g *groupMetrics) proposalError() {
	if g != nil {
		g.proposalErrs.Inc()
	}
}

func (g *groupMetrics) commit(k Kind, exec time.Duration) {
	if g != nil && validKind(k) {
		g.commits[k].Inc()
		g.exec.Observe(exec.Seconds())
	}
}

func (g *groupMetrics) read() {
	if g != nil {
		g.reads.Inc()
	}
}

func (g *groupMetrics) badRequest(reason string) {
	if g != nil {
		g.m.badRequests.WithLabelValues(g.group, reason).Inc()
	}
}

func (g *groupMetrics) connPanic(path string) {
	if g != nil {
		g.m.connPanics.WithLabelValues(g.group, path).Inc()
	}
}

func (g *groupMetrics) lag(d time.Duration) {
	if g != nil {
		g.applyLag.Observe(d.Seconds())
	}
}

func (g *groupMetrics) setApplied(idx uint64) {
	if g != nil {
		g.appliedIndex.Set(float64(idx))
	}
}

func (g *groupMetrics) setSessions(n int) {
	if g != nil {
		g.sessions.Set(float64(n))
	}
}

func (g *groupMetrics) setQueue(n int) {
	if g != nil {
		g.queue.Set(float64(n))
	}
}

// ObserveLeader records the leader seen for group and counts changes.
func (m *Metrics) ObserveLeader(group string, leader uint64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	last, seen := m.lastLeader[group]
	m.lastLeader[group] = leader
	m.mu.Unlock()
	if seen && last != leader {
		m.leaderChanges.WithLabelValues(group).Inc()
	}
	m.leader.WithLabelValues(group).Set(float64(leader))
}

// WatchLeader polls leader() every interval until ctx ends and feeds
// ObserveLeader; use it with func() uint64 { return g.Status().Leader }.
func (m *Metrics) WatchLeader(ctx context.Context, group string, leader func() uint64, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.ObserveLeader(group, leader())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// setState publishes the replica's state: 1 for state, 0 for the others.
func (g *groupMetrics) setState(state string) {
	if g == nil {
		return
	}
	for _, s := range []string{StateServing, StateRebuilding, StateBroken} {
		v := 0.0
		if s == state {
			v = 1
		}
		g.m.replicaState.WithLabelValues(g.group, s).Set(v)
	}
}

// repair counts one repair of the app.
func (g *groupMetrics) repair(cause string, ok bool) {
	if g == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "failed"
	}
	g.m.repairs.WithLabelValues(g.group, cause, result).Inc()
}

// audit counts one audit result of this replica.
func (g *groupMetrics) audit(result string) {
	if g != nil {
		g.m.audits.WithLabelValues(g.group, result).Inc()
	}
}

// setDiverged publishes whether member's app differs from the majority's.
func (g *groupMetrics) setDiverged(member uint64, diverged bool) {
	if g == nil {
		return
	}
	v := 0.0
	if diverged {
		v = 1
	}
	g.m.diverged.WithLabelValues(g.group, strconv.FormatUint(member, 10)).Set(v)
}

// pipelineRun records the entries of one drained pipeline run.
func (g *groupMetrics) pipelineRun(n int) {
	if g == nil {
		return
	}
	g.runEntries.Observe(float64(n))
}
