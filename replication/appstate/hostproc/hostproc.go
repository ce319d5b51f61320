// Package hostproc finds, from the host, the process that serves a TCP
// port inside a network namespace, so smr-cri can read files of an app
// container through /proc/<pid>/cwd and /proc/<pid>/root (the host's view
// of the container's filesystem) without entering it.
package hostproc

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrNotFound: no process of this host matches.
var ErrNotFound = errors.New("hostproc: no matching process on this host")

// procRoot is /proc (a variable for tests).
var procRoot = "/proc"

// FindListener returns the host PID of the process that listens on TCP
// port in the network namespace netnsPath ("" or "/proc/self/ns/net": the
// caller's own) and whose PID in its own PID namespace is nsPID (what the
// app reports of itself, e.g. Redis' INFO process_id). Both must hold: in
// a pod, the pause process and the app can have the same PID (1) in their
// own namespaces, and only the app owns the listening socket.
func FindListener(netnsPath string, nsPID, port int) (int, error) {
	if netnsPath == "" {
		netnsPath = filepath.Join(procRoot, "self/ns/net")
	}
	want, err := inode(netnsPath)
	if err != nil {
		return 0, fmt.Errorf("hostproc: network namespace %s: %w", netnsPath, err)
	}
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return 0, fmt.Errorf("hostproc: %w", err)
	}
	var found []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ino, err := inode(filepath.Join(procRoot, e.Name(), "ns/net")); err != nil || ino != want {
			continue
		}
		if p, err := innermostPID(pid); err != nil || p != nsPID {
			continue
		}
		if ok, err := listens(pid, port); err == nil && ok {
			found = append(found, pid)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("%w: none listens on port %d with PID %d in its namespace (netns %s)", ErrNotFound, port, nsPID, netnsPath)
	case 1:
		return found[0], nil
	}
	// Threads are not listed in /proc; processes sharing the socket (a
	// forked child, e.g. Redis' own save child) are: prefer the parent.
	for _, pid := range found {
		if pp, err := parentPID(pid); err == nil && !contains(found, pp) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("hostproc: %d processes listen on port %d: %v", len(found), port, found)
}

// Still reports whether pid is still the process FindListener found (same
// PID in its namespace, same network namespace), so a cached PID can be
// reused until the app restarts.
func Still(hostPID int, netnsPath string, nsPID int) bool {
	if netnsPath == "" {
		netnsPath = filepath.Join(procRoot, "self/ns/net")
	}
	want, err := inode(netnsPath)
	if err != nil {
		return false
	}
	ino, err := inode(filepath.Join(procRoot, strconv.Itoa(hostPID), "ns/net"))
	if err != nil || ino != want {
		return false
	}
	p, err := innermostPID(hostPID)
	return err == nil && p == nsPID
}

// Path is name as the process hostPID sees it relative to its working
// directory (name relative) or its root (name absolute).
func Path(hostPID int, name string) string {
	if filepath.IsAbs(name) {
		return filepath.Join(procRoot, strconv.Itoa(hostPID), "root", name)
	}
	return filepath.Join(procRoot, strconv.Itoa(hostPID), "cwd", name)
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func inode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// status returns one field of /proc/<pid>/status.
func status(pid int, field string) (string, error) {
	f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "status"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// innermostPID is the PID of pid in its own PID namespace (the last of
// NSpid).
func innermostPID(pid int) (int, error) {
	v, err := status(pid, "NSpid")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(v)
	if len(f) == 0 {
		return 0, fmt.Errorf("empty NSpid of %d", pid)
	}
	return strconv.Atoi(f[len(f)-1])
}

func parentPID(pid int) (int, error) {
	v, err := status(pid, "PPid")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}

// listens says whether pid holds a socket listening on TCP port (IPv4 or
// IPv6) in its network namespace.
func listens(pid, port int) (bool, error) {
	inodes := map[string]bool{}
	for _, t := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "net", t))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(p) == port {
				inodes[fs[9]] = true
			}
		}
		f.Close()
	}
	if len(inodes) == 0 {
		return false, nil
	}
	fdDir := filepath.Join(procRoot, strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return false, err
	}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(l, "socket:["); ok && inodes[strings.TrimSuffix(ino, "]")] {
			return true, nil
		}
	}
	return false, nil
}
