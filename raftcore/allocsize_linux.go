package raftcore

import (
	"fmt"
	"syscall"
)

// allocatedSize is the disk space a file takes (st_blocks), which for
// etcd's preallocated WAL segments is their full 64 MiB.
func allocatedSize(path string) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Blocks * 512, nil
}
