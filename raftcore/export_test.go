package raftcore_test

import (
	"os"
	"path/filepath"

	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

func removeDataDir(c *kvtest.Cluster, id uint64) error {
	return os.RemoveAll(filepath.Join(c.Dir, kvtest.Addr(id)))
}
