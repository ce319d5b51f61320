package raftcore

import (
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are raftcore's internal metrics, labelled by group (the executor
// exports leader, applied index and proposal counts). A nil *Metrics is
// valid and records nothing.
type Metrics struct {
	walSave     *prometheus.HistogramVec
	batch       *prometheus.HistogramVec
	readBatch   *prometheus.HistogramVec
	sessions    *prometheus.GaugeVec
	unreachable *prometheus.CounterVec
	snapshots   *prometheus.CounterVec
	expired     *prometheus.CounterVec
	// last snapshot taken here, and last one restored (received or at start)
	snapIndex, snapBytes, snapSeconds *prometheus.GaugeVec
	restoreBytes, restoreSeconds      *prometheus.GaugeVec
	restores                          *prometheus.CounterVec
	// snapshot state transfers, by direction (in, out) and peer member
	transferBytes, transferSeconds *prometheus.GaugeVec
	transfers                      *prometheus.CounterVec
	// the group's WAL and snapshot files on disk, and the log entries held
	logBytes, logEntries *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	g := []string{"group"}
	m := &Metrics{
		walSave: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smr_raft_wal_save_seconds",
			Help:    "WAL write (+fsync when needed) per raft Ready.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}, g),
		batch: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smr_raft_batch_requests",
			Help:    "Client requests coalesced into one proposed raft entry.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12)}, g),
		readBatch: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "smr_raft_read_batch_requests",
			Help:    "Reads served by one raft ReadIndex request.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12)}, g),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_dedup_sessions",
			Help: "Client sessions in the replicated de-duplication table (not yet ended or forgotten)."}, g),
		unreachable: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_raft_unreachable_total",
			Help: "Times the transport reported a peer unreachable (dropped messages)."}, g),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_raft_snapshots_total",
			Help: "Snapshots saved by this member."}, g),
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_raft_expired_requests_total",
			Help: "Forwarded proposals and reads failed after staying unanswered."}, g),
		snapIndex: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_snapshot_index",
			Help: "Log index of the last snapshot taken by this member."}, g),
		snapBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_snapshot_bytes",
			Help: "Size of the last snapshot taken by this member (state machine part)."}, g),
		snapSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_snapshot_seconds",
			Help: "Time the last snapshot took to capture from the state machine."}, g),
		restoreBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_restore_bytes",
			Help: "Size of the last snapshot installed into the state machine (at start or received from a peer)."}, g),
		restoreSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_restore_seconds",
			Help: "Time the last snapshot install took."}, g),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_raft_restores_total",
			Help: "Snapshots installed into the state machine."}, g),
		transferBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_transfer_bytes",
			Help: "Size of the last snapshot state transferred to (out) or from (in) a member."}, []string{"group", "direction", "peer"}),
		transferSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_transfer_seconds",
			Help: "Duration of the last snapshot state transfer to (out) or from (in) a member."}, []string{"group", "direction", "peer"}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "smr_raft_transfers_total",
			Help: "Snapshot state transfers completed, by direction and member."}, []string{"group", "direction", "peer"}),
		logBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_log_bytes",
			Help: "Allocated disk size of the group's WAL and snapshot files on this member (after the last snapshot)."}, g),
		logEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "smr_raft_log_entries",
			Help: "Raft log entries held by this member (after the last snapshot)."}, g),
	}
	for _, c := range []prometheus.Collector{m.transferBytes, m.transferSeconds, m.transfers, m.logBytes, m.logEntries, m.walSave, m.batch, m.readBatch, m.sessions, m.unreachable, m.snapshots, m.expired,
		m.snapIndex, m.snapBytes, m.snapSeconds, m.restoreBytes, m.restoreSeconds, m.restores} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("raftcore: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) observeWALSave(group string, d time.Duration) {
	if m != nil {
		m.walSave.WithLabelValues(group).Observe(d.Seconds())
	}
}

func (m *Metrics) observeBatch(group string, n int) {
	if m != nil {
		m.batch.WithLabelValues(group).Observe(float64(n))
	}
}

func (m *Metrics) observeReadBatch(group string, n int) {
	if m != nil {
		m.readBatch.WithLabelValues(group).Observe(float64(n))
	}
}

func (m *Metrics) setSessions(group string, n int) {
	if m != nil {
		m.sessions.WithLabelValues(group).Set(float64(n))
	}
}

func (m *Metrics) incUnreachable(group string) {
	if m != nil {
		m.unreachable.WithLabelValues(group).Inc()
	}
}

func (m *Metrics) incSnapshots(group string) {
	if m != nil {
		m.snapshots.WithLabelValues(group).Inc()
	}
}

func (m *Metrics) addExpired(group string, n int) {
	if m != nil && n > 0 {
		m.expired.WithLabelValues(group).Add(float64(n))
	}
}

func (m *Metrics) observeSnapshot(group string, index uint64, n int, d time.Duration) {
	if m != nil {
		m.snapIndex.WithLabelValues(group).Set(float64(index))
		m.snapBytes.WithLabelValues(group).Set(float64(n))
		m.snapSeconds.WithLabelValues(group).Set(d.Seconds())
	}
}

func (m *Metrics) observeRestore(group string, n int, d time.Duration) {
	if m != nil {
		m.restores.WithLabelValues(group).Inc()
		m.restoreBytes.WithLabelValues(group).Set(float64(n))
		m.restoreSeconds.WithLabelValues(group).Set(d.Seconds())
	}
}

func (m *Metrics) observeTransfer(group, dir string, peer uint64, n int64, d time.Duration) {
	if m != nil {
		p := strconv.FormatUint(peer, 10)
		m.transfers.WithLabelValues(group, dir, p).Inc()
		m.transferBytes.WithLabelValues(group, dir, p).Set(float64(n))
		m.transferSeconds.WithLabelValues(group, dir, p).Set(d.Seconds())
	}
}

func (m *Metrics) setLog(group string, bytes int64, entries uint64) {
	if m != nil {
		m.logBytes.WithLabelValues(group).Set(float64(bytes))
		m.logEntries.WithLabelValues(group).Set(float64(entries))
	}
}

// PublishStorage sets smr_raft_log_bytes, smr_raft_log_entries and
// smr_raft_snapshot_index from what the member holds now (0: no snapshot),
// so a log that grows without snapshots shows between them too (a snapshot
// also sets them). The node daemon calls it periodically.
func (g *Group) PublishStorage() error {
	bytes, entries, err := g.DiskUsage()
	if err != nil {
		return err
	}
	g.ncfg.Metrics.setLog(g.name, bytes, entries)
	if snap, err := g.ds.mem.Snapshot(); err == nil && g.ncfg.Metrics != nil {
		g.ncfg.Metrics.snapIndex.WithLabelValues(g.name).Set(float64(snap.Metadata.GetIndex()))
	}
	return nil
}
