package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/test/lab/freeport"
)

// The repair paths record their events on the replica's pod: a restart
// that finds an entry in flight (the member's start repairs) and a
// container created again (a running member is rebuilt) each give one
// RepairStarted with the cause, then RepairFinished once the app caught up.
func TestRepairEvents(t *testing.T) {
	tests := []struct {
		name  string
		cause string
		fault func(t *testing.T, dataDir string, d *loopbackDaemon, app *counterApp) *loopbackDaemon
	}{
		{"in flight at a restart", replication.CauseInFlight,
			func(t *testing.T, dataDir string, d *loopbackDaemon, app *counterApp) *loopbackDaemon {
				if err := d.Close(context.Background()); err != nil {
					t.Fatal(err)
				}
				// What a SIGKILL while a request was in flight leaves behind.
				rec := filepath.Join(dataDir, "default.redis", "member-1", "applied")
				b, err := os.ReadFile(rec)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(rec, []byte(strings.Replace(string(b), " a\n", " f\n", 1)), 0o600); err != nil {
					t.Fatal(err)
				}
				return nil // restart below
			}},
		{"container created again", replication.CauseContainerRestart,
			func(t *testing.T, _ string, d *loopbackDaemon, app *counterApp) *loopbackDaemon {
				app.restartEmpty()
				d.ContainerCreating(context.Background(), "sb1", "app", 1)
				return d
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dataDir, app, raftPort := t.TempDir(), newCounterApp(t), freeport.PortT(t)
			start := func(events *eventLog) *loopbackDaemon {
				return newLoopbackDaemonWithConfig(t, dataDir, app, func(c *Config) { c.Events = events })
			}
			first := &eventLog{}
			d := start(first)
			if err := d.AttachPod(ctx, onePod("sb1", raftPort)); err != nil {
				t.Fatal(err)
			}
			incr(t, ctx, <-d.clientAddr, 3)
			events := first
			if d = tc.fault(t, dataDir, d, app); d == nil {
				events = &eventLog{}
				d = start(events)
				if err := d.AttachPod(ctx, onePod("sb1", raftPort)); err != nil {
					t.Fatal(err)
				}
			}
			defer d.Close(ctx)
			waitFor(t, ctx, "RepairFinished", func() (bool, string) {
				return len(events.with(podevents.ReasonRepairFinished)) > 0, strings.Join(events.evs, "\n")
			})
			for _, reason := range []string{podevents.ReasonRepairStarted, podevents.ReasonRepairFinished} {
				evs := events.with(reason)
				if len(evs) != 1 || !strings.Contains(evs[0], "default/redis-0") || !strings.Contains(evs[0], "cause "+tc.cause) ||
					strings.Contains(evs[0], "failed") {
					t.Errorf("%s events: %q", reason, evs)
				}
			}
			if n := len(events.with(podevents.ReasonDivergenceDetected)); n != 0 {
				t.Errorf("%d DivergenceDetected events for a repair that is not a divergence", n)
			}
			if _, k := app.counts(); k != 3 || app.flushCount() != 1 {
				t.Errorf("k=%d after %d FLUSHALL, want the app emptied once and the 3 INCRs replayed", k, app.flushCount())
			}
		})
	}
}
