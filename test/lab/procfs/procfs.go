// Package procfs reads the Linux process table (/proc) for the lab: which
// processes run, with which command line and parent, how much CPU and
// memory they use. The lab's clean-ups find their processes with it and the
// benchmarks measure them; one parser, because /proc/<pid>/stat has a trap
// (the command name may hold spaces and parentheses).
package procfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// root is where the process table is read; tests point it elsewhere.
var root = "/proc"

// clockTick is USER_HZ, the unit of utime and stime: 100 on every Linux
// architecture the project runs on.
const clockTick = 10 * time.Millisecond

// Proc is one process.
type Proc struct {
	PID, PPID int
	State     byte          // R, S, D, Z, T, ...
	Args      []string      // the command line; empty for kernel threads
	CPU       time.Duration // user + system time so far
}

// Zombie reports whether the process has exited and waits to be reaped.
func (p Proc) Zombie() bool { return p.State == 'Z' }

// Read returns the process pid. The error wraps os.ErrNotExist when there
// is no such process.
func Read(pid int) (Proc, error) {
	if pid <= 0 {
		return Proc{}, fmt.Errorf("procfs: pid %d: %w", pid, os.ErrNotExist)
	}
	base := root + "/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(base + "/stat")
	if err != nil {
		return Proc{}, fmt.Errorf("procfs: %w", err)
	}
	p, err := parseStat(stat)
	if err != nil {
		return Proc{}, fmt.Errorf("procfs: %s/stat: %w", base, err)
	}
	p.PID = pid
	// The command line may be gone already (the process exited meanwhile):
	// the rest is still true of its last moment.
	if cmdline, err := os.ReadFile(base + "/cmdline"); err == nil && len(cmdline) > 0 {
		p.Args = strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	}
	return p, nil
}

// parseStat reads state, parent and CPU time from a /proc/<pid>/stat line:
// "pid (comm) S ppid ... utime stime ...". comm may hold spaces and ')',
// so the fields are counted from the last ')'.
func parseStat(b []byte) (Proc, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Proc{}, errors.New("no ')' after the command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] state (field 3), f[1] ppid (4), f[11] utime (14), f[12] stime (15)
	if len(f) < 13 || len(f[0]) != 1 {
		return Proc{}, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	var n [3]int64
	for k, idx := range []int{1, 11, 12} {
		v, err := strconv.ParseInt(f[idx], 10, 64)
		if err != nil {
			return Proc{}, fmt.Errorf("field %d: %w", idx+3, err)
		}
		n[k] = v
	}
	return Proc{State: f[0][0], PPID: int(n[0]), CPU: time.Duration(n[1]+n[2]) * clockTick}, nil
}

// Alive reports whether pid is a running (not zombie) process.
func Alive(pid int) bool {
	p, err := Read(pid)
	return err == nil && !p.Zombie()
}

// List returns every live (non-zombie) process.
func List() []Proc {
	entries, _ := os.ReadDir(root)
	var out []Proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := Read(pid); err == nil && !p.Zombie() {
			out = append(out, p)
		}
	}
	return out
}

// RSSKiB returns the resident memory (VmRSS) of pid in KiB; 0 when it is
// gone or has none (a kernel thread).
func RSSKiB(pid int) int64 {
	f, err := os.Open(root + "/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
