package cli

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/smr-io/smr-cri/internal/nodestatus"
)

// serveGatherer reads `smr-cri serve`'s metrics from its root-only status
// socket, so the trace container's /metrics (the DaemonSet's PodMonitor
// target) carries the replication metrics without serve opening a TCP port.
// While serve is down it returns nothing (smr_daemon_up says so), never an
// error that would fail the whole scrape.
type serveGatherer struct {
	socket  string
	timeout time.Duration
	onError func(error)
}

func (g serveGatherer) Gather() ([]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	body, err := nodestatus.Get(ctx, g.socket, nodestatus.MetricsPath)
	if err != nil {
		g.report(err)
		return nil, nil
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		g.report(fmt.Errorf("parse serve's metrics: %w", err))
		return nil, nil
	}
	out := make([]*dto.MetricFamily, 0, len(fams))
	for _, f := range fams {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out, nil
}

func (g serveGatherer) report(err error) {
	if g.onError != nil {
		g.onError(err)
	}
}
