package replication

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/replication/framing"
)

// TestNoSnapshotOfAFencedApp: once a replica is fenced for a repair, its app's state is
// uncertain; a snapshot of it would be restored by that very repair, so none is taken.
func TestNoSnapshotOfAFencedApp(t *testing.T) {
	x, err := NewExecutor(ExecutorConfig{Group: "g", Self: 1, Ports: []Port{{6379, framing.ProtoRESP}}, Dialer: failDialer{}})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	if err := x.EnableSnapshots(SnapshotConfig{}); err != nil {
		t.Fatal(err)
	}
	x.Fence()
	var buf bytes.Buffer
	err = x.SnapshotTo(9, &buf)
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "uncertain") {
		t.Fatalf("SnapshotTo of a fenced app = %v, want ErrNotReady saying its state is uncertain", err)
	}
	if buf.Len() != 0 {
		t.Errorf("SnapshotTo of a fenced app wrote %d bytes", buf.Len())
	}
}
