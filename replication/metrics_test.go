package replication

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestMetricsLeaderChanges(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, leader := range []uint64{0, 1, 1, 2, 0, 2} {
		m.ObserveLeader("g", leader)
	}
	if got := counterValue(t, m.leaderChanges.WithLabelValues("g")); got != 4 {
		t.Errorf("leader changes = %v, want 4", got)
	}
	g := m.forGroup("g")
	g.proposal(KindRequest)
	g.proposal(Kind(99)) // unknown kinds are ignored, not a panic
	if got := counterValue(t, m.proposals.WithLabelValues("g", "REQUEST")); got != 1 {
		t.Errorf("proposals = %v", got)
	}
	// Registering twice on one registry is a clear error.
	if _, err := NewMetrics(reg); err == nil || !strings.Contains(err.Error(), "register replication metrics") {
		t.Errorf("second NewMetrics: %v", err)
	}
	var nilMetrics *Metrics
	nilMetrics.ObserveLeader("g", 1)
	nilMetrics.forGroup("g").commit(KindOpen, 0)
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
