package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smr-io/smr-cri/test/lab/nodelab"
	"github.com/smr-io/smr-cri/test/lab/procfs"
)

// process is one long-running program of the cluster.
type process struct {
	Name  string   // log and pid file name: etcd, kube-apiserver, smr-node1-kubelet, ...
	NetNS string   // network namespace path to enter with nsenter --net, or "" for the host's
	Args  []string // program and arguments; some argument must name the state directory
	Env   []string // added to this process's environment
	// LogFile, if set, is where the output goes instead; logs/<Name>.log is then a symlink to
	// it, so every log of the cluster is still found (and kept by --keep-logs) in logs/.
	LogFile string
}

// start runs p detached (a session of its own, so it outlives `cluster up`), with stdout and
// stderr appended to logs/<name>.log, and records its pid in pids/<name>.pid. It returns the pid.
// nsenter without --fork execs the program, so the pid is the program's own.
func start(c Config, p process) (int, error) {
	if len(p.Args) == 0 {
		return 0, fmt.Errorf("cluster: process %s: no command", p.Name)
	}
	args := p.Args
	if p.NetNS != "" {
		args = append([]string{"nsenter", "--net=" + p.NetNS, "--"}, args...)
	}
	for _, d := range []string{c.logDir(), c.pidDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, fmt.Errorf("cluster: %w", err)
		}
	}
	logPath, err := logFileOf(c, p)
	if err != nil {
		return 0, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("cluster: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = c.Dir
	if len(p.Env) > 0 {
		cmd.Env = append(os.Environ(), p.Env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("cluster: start %s: %w", p.Name, err)
	}
	pid := cmd.Process.Pid
	go func() { _ = cmd.Wait() }() // reap it if it dies while this process still runs
	if err := os.WriteFile(filepath.Join(c.pidDir(), p.Name+".pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return pid, fmt.Errorf("cluster: %w", err)
	}
	return pid, nil
}

// logFileOf returns the file p's output is appended to: logs/<Name>.log, or p.LogFile with
// logs/<Name>.log made a (relative) symlink to it.
func logFileOf(c Config, p process) (string, error) {
	link := filepath.Join(c.logDir(), p.Name+".log")
	if p.LogFile == "" {
		return link, nil
	}
	if err := os.MkdirAll(filepath.Dir(p.LogFile), 0o755); err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	target, err := filepath.Rel(c.logDir(), p.LogFile)
	if err != nil {
		return "", fmt.Errorf("cluster: log of %s: %w", p.Name, err)
	}
	if old, err := os.Readlink(link); err != nil || old != target {
		// A regular file left by an older layout (or a stale link) gives way to the link.
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("cluster: %w", err)
		}
		if err := os.Symlink(target, link); err != nil {
			return "", fmt.Errorf("cluster: log of %s: %w", p.Name, err)
		}
	}
	return p.LogFile, nil
}

// startedPIDs reads the pid files start wrote (long-running processes only; ownProcs also sees
// short-lived helpers such as ctr, runc and CNI plugins).
func startedPIDs(c Config) ([]int, error) {
	files, err := filepath.Glob(filepath.Join(c.pidDir(), "*.pid"))
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("cluster: pid file %s: %w", f, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// ownProcs returns the processes of the cluster in dir: every process with an argument inside
// dir (all of them name a config, socket or data path there; containerd shims name the
// containerd socket), excluding this process and its ancestors.
func ownProcs(dir string) []procfs.Proc {
	all := procfs.List()
	byPID := map[int]procfs.Proc{}
	for _, p := range all {
		byPID[p.PID] = p
	}
	self := map[int]bool{}
	for pid := os.Getpid(); pid > 1 && !self[pid]; pid = byPID[pid].PPID {
		self[pid] = true
	}
	var out []procfs.Proc
	for _, p := range all {
		if self[p.PID] {
			continue
		}
		for _, a := range p.Args {
			if a == dir || strings.Contains(a, dir+"/") {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// withDescendants adds every descendant of procs (the containers under containerd's shims).
func withDescendants(procs []procfs.Proc) []procfs.Proc {
	all := procfs.List()
	children := map[int][]procfs.Proc{}
	for _, p := range all {
		children[p.PPID] = append(children[p.PPID], p)
	}
	seen := map[int]bool{}
	var out []procfs.Proc
	var walk func(p procfs.Proc)
	walk = func(p procfs.Proc) {
		if seen[p.PID] {
			return
		}
		seen[p.PID] = true
		out = append(out, p)
		for _, ch := range children[p.PID] {
			walk(ch)
		}
	}
	for _, p := range procs {
		walk(p)
	}
	return out
}

// RSS is the resident memory of the cluster's processes, by component.
type RSS struct {
	TotalKiB int64
	ByName   map[string]int64 // program base name -> KiB (containers counted under "containers")
	Procs    int
}

// MeasureRSS sums VmRSS over every process of the cluster and its containers. Shared pages are
// counted once per process, so this is an upper bound.
func MeasureRSS(c Config) RSS {
	own := ownProcs(c.Dir)
	ownSet := map[int]bool{}
	for _, p := range own {
		ownSet[p.PID] = true
	}
	r := RSS{ByName: map[string]int64{}}
	for _, p := range withDescendants(own) {
		name := "containers"
		if ownSet[p.PID] && len(p.Args) > 0 {
			name = filepath.Base(p.Args[0])
		}
		rss := procfs.RSSKiB(p.PID)
		r.ByName[name] += rss
		r.TotalKiB += rss
		r.Procs++
	}
	return r
}

// String renders the measurement as one line, biggest first.
func (r RSS) String() string {
	names := make([]string, 0, len(r.ByName))
	for n := range r.ByName {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return r.ByName[names[i]] > r.ByName[names[j]] })
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s=%dMiB", n, r.ByName[n]/1024))
	}
	return fmt.Sprintf("total %d MiB in %d processes (%s)", r.TotalKiB/1024, r.Procs, strings.Join(parts, " "))
}

// stopProcs sends SIGTERM to every pid, waits up to grace, then SIGKILLs the survivors, saying
// on stderr which ones.
func stopProcs(pids []int, grace time.Duration) error {
	return nodelab.TerminateAll(pids, grace, func(survivors []int) {
		var killed []string
		for _, pid := range survivors {
			if p, err := procfs.Read(pid); err == nil && len(p.Args) > 0 {
				killed = append(killed, fmt.Sprintf("%d %s", pid, filepath.Base(p.Args[0])))
			}
		}
		if len(killed) > 0 {
			fmt.Fprintf(os.Stderr, "cluster: SIGKILL after %s: %s\n", grace, strings.Join(killed, ", "))
		}
	})
}

// Kill sends SIGKILL to every process of the cluster in c.Dir and to their descendants (the
// containers), as a crash would, and waits until they are gone. It repeats until no process is
// left: a process can fork while the others die (containerd starting a shim, a shim runc).
// Tests use it; Up and Start clean up after it.
func Kill(c Config) error {
	for round := 0; round < 20; round++ {
		procs := withDescendants(ownProcs(c.Dir))
		if len(procs) == 0 {
			return nil
		}
		pids := make([]int, 0, len(procs))
		for _, p := range procs {
			pids = append(pids, p.PID)
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
		if err := stopProcs(pids, 5*time.Second); err != nil {
			return err
		}
	}
	return fmt.Errorf("cluster: processes of %s keep appearing after 20 rounds of SIGKILL", c.Dir)
}
