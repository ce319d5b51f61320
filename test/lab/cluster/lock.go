package cluster

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// lockPath serializes Up, Start, Stop and Down machine-wide: the bridge, the node namespaces and
// their routes have fixed names, so two cluster operations must never interleave.
var lockPath = "/run/smr-cluster.lock"

// lock takes the machine-wide cluster lock, saying so when it has to wait; the returned function
// releases it.
func lock(log io.Writer) (func(), error) { return flockPath(lockPath, log) }

// sessionLockPath is held by a whole test run that owns the cluster (LockSession).
var sessionLockPath = "/run/smr-cluster-session.lock"

// LockSession serializes whole runs that bring the cluster up, use it and take it down (the e2e
// package's TestMain): a second run waits instead of replacing the first one's cluster under
// it. The returned function releases it.
func LockSession(log io.Writer) (func(), error) { return flockPath(sessionLockPath, log) }

func flockPath(lockPath string, log io.Writer) (func(), error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cluster: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if log != nil {
			fmt.Fprintf(log, "cluster: %s is held by another cluster user; waiting\n", lockPath)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("cluster: lock %s: %w", lockPath, err)
		}
	}
	return func() { f.Close() }, nil
}
