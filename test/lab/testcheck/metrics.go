package testcheck

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricSum sums the counter and gauge samples of family name in g whose
// labels include every pair of want (nil: all samples); 0 when the family
// does not exist.
func MetricSum(tb testing.TB, g prometheus.Gatherer, name string, want map[string]string) float64 {
	tb.Helper()
	fams, err := g.Gather()
	if err != nil {
		tb.Fatalf("gather metrics: %v", err)
	}
	var v float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	samples:
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, w := range want {
				if labels[k] != w {
					continue samples
				}
			}
			v += s.GetCounter().GetValue() + s.GetGauge().GetValue()
		}
	}
	return v
}
