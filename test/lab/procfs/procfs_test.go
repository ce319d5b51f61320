package procfs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	rest := " 0 0 0 0 0 0 0 150 50 0 0 20 0 1 0 100 0 0"
	tests := []struct {
		name    string
		stat    string
		want    Proc
		wantErr string
	}{
		{"plain", "42 (redis-server) S 1 42 42" + rest, Proc{State: 'S', PPID: 1, CPU: 2 * time.Second}, ""},
		{"comm with spaces and parentheses", "7 (a b) (c)) R 3 7 7" + rest, Proc{State: 'R', PPID: 3, CPU: 2 * time.Second}, ""},
		{"zombie", "9 (sh) Z 2 9 9" + rest, Proc{State: 'Z', PPID: 2, CPU: 2 * time.Second}, ""},
		{"no command name", "9 sh S 2", Proc{}, "no ')'"},
		{"truncated", "9 (sh) S 2 9", Proc{}, "want at least 13"},
		{"bad number", "9 (sh) S x 9 9" + rest, Proc{}, "field 4"},
		{"bad state", "9 (sh) SS 2 9 9" + rest, Proc{}, "fields after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.stat))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseStat = %+v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.State != tt.want.State || got.PPID != tt.want.PPID || got.CPU != tt.want.CPU {
				t.Fatalf("parseStat = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// fakeRoot points the package at a process table written by the test.
func fakeRoot(t *testing.T, procs map[string]map[string]string) {
	t.Helper()
	dir := t.TempDir()
	for pid, files := range procs {
		if err := os.MkdirAll(filepath.Join(dir, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, pid, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	old := root
	root = dir
	t.Cleanup(func() { root = old })
}

func TestReadListAliveRSS(t *testing.T) {
	rest := " 0 0 0 0 0 0 0 1 1 0 0 20 0 1 0 100 0 0"
	fakeRoot(t, map[string]map[string]string{
		"10":   {"stat": "10 (containerd) S 1 10 10" + rest, "cmdline": "containerd\x00--config\x00/lab/config.toml\x00", "status": "Name:\tcontainerd\nVmRSS:\t  2048 kB\n"},
		"11":   {"stat": "11 (sh) Z 10 11 11" + rest},
		"12":   {"stat": "12 (kthreadd) S 0 0 0" + rest},     // kernel thread: no command line
		"13":   {"stat": "13 (broken", "cmdline": "x\x00"},   // unreadable stat: left out
		"abc":  {"stat": "not a pid"},                        // not a process
		"self": {"stat": "10 (containerd) S 1 10 10" + rest}, // a link in the real /proc
	})
	p, err := Read(10)
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != 10 || p.PPID != 1 || !slices.Equal(p.Args, []string{"containerd", "--config", "/lab/config.toml"}) || p.CPU != 20*time.Millisecond {
		t.Errorf("Read(10) = %+v", p)
	}
	if _, err := Read(99); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Read(99) error = %v, want os.ErrNotExist", err)
	}
	if _, err := Read(0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Read(0) error = %v, want os.ErrNotExist", err)
	}
	if _, err := Read(13); err == nil || !strings.Contains(err.Error(), "13/stat") {
		t.Errorf("Read(13) error = %v, want one naming the bad stat file", err)
	}
	var pids []int
	for _, p := range List() {
		pids = append(pids, p.PID)
	}
	slices.Sort(pids)
	if !slices.Equal(pids, []int{10, 12}) {
		t.Errorf("List pids = %v, want [10 12] (no zombie, no unreadable entry)", pids)
	}
	for pid, want := range map[int]bool{10: true, 11: false, 12: true, 13: false, 99: false, -1: false} {
		if got := Alive(pid); got != want {
			t.Errorf("Alive(%d) = %v, want %v", pid, got, want)
		}
	}
	for pid, want := range map[int]int64{10: 2048, 12: 0, 99: 0} {
		if got := RSSKiB(pid); got != want {
			t.Errorf("RSSKiB(%d) = %d, want %d", pid, got, want)
		}
	}
}

// TestRealProcess checks the parser against the kernel's own table: a child
// this test starts, then reaps.
func TestRealProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	p, err := Read(pid)
	if err != nil {
		t.Fatal(err)
	}
	if p.PPID != os.Getpid() || !slices.Equal(p.Args, []string{"sleep", "30"}) || p.Zombie() {
		t.Errorf("Read(child) = %+v, want parent %d and args [sleep 30]", p, os.Getpid())
	}
	if RSSKiB(pid) <= 0 || !Alive(pid) {
		t.Errorf("child: RSSKiB %d, Alive %v; want > 0 and true", RSSKiB(pid), Alive(pid))
	}
	if !slices.ContainsFunc(List(), func(q Proc) bool { return q.PID == pid }) {
		t.Error("List misses the child")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if Alive(pid) {
		t.Errorf("Alive(%d) after kill and reap = true", pid)
	}
}
