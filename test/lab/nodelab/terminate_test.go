package nodelab

import (
	"bufio"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/procfs"
)

// TerminateAll stops every process: one that exits on SIGTERM and one that ignores it (which
// is SIGKILLed after the grace period, and only it is passed to beforeKill).
func TestTerminateAll(t *testing.T) {
	tests := []struct {
		name       string
		script     string
		wantKilled bool
	}{
		{"exits on SIGTERM", "echo ready; exec sleep 100", false},
		// An ignored signal stays ignored across exec, so sleep ignores SIGTERM too.
		{"ignores SIGTERM", `trap "" TERM; echo ready; exec sleep 100`, true},
	}
	var pids []int
	var wantSurvivors []int
	for _, tt := range tests {
		cmd := exec.Command("sh", "-c", tt.script)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("%s: start: %v", tt.name, err)
		}
		go func() { _ = cmd.Wait() }() // reap it, or it stays a zombie (ProcessAlive says gone)
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		// The trap is set once "ready" is printed: a SIGTERM before that would end the shell.
		if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
			t.Fatalf("%s: read ready: %v", tt.name, err)
		}
		pids = append(pids, cmd.Process.Pid)
		if tt.wantKilled {
			wantSurvivors = append(wantSurvivors, cmd.Process.Pid)
		}
	}
	var survivors []int
	if err := TerminateAll(pids, 300*time.Millisecond, func(s []int) { survivors = s }); err != nil {
		t.Fatalf("TerminateAll: %v", err)
	}
	if !slices.Equal(survivors, wantSurvivors) {
		t.Errorf("beforeKill got %v, want %v", survivors, wantSurvivors)
	}
	for i, pid := range pids {
		if procfs.Alive(pid) {
			t.Errorf("%s: pid %d still alive", tests[i].name, pid)
		}
	}
}
