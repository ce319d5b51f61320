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
func lock(log io.Writer) (func(), error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cluster: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if log != nil {
			fmt.Fprintf(log, "cluster: another cluster operation holds %s; waiting\n", lockPath)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("cluster: lock %s: %w", lockPath, err)
		}
	}
	return func() { f.Close() }, nil
}
