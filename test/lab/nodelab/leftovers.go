package nodelab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Paths outside a lab's directory where containerd 1.6 and libcni keep per-task files.
var (
	shimSocketDir  = "/run/containerd/s"    // shim sockets, named in each task bundle's address file
	cniResultsDir  = "/var/lib/cni/results" // libcni's cached ADD results, <network>-<sandbox id>-<ifname>
	taskBundleGlob = "io.containerd.runtime.v2.task/*/*"
)

// removeTaskLeftovers removes what a task that never shut down cleanly (containerd, its shim or
// the whole machine's processes killed with SIGKILL) leaves outside the lab directory: the shim's
// socket and the cached CNI results of its sandbox. Run it after the shims are dead.
func removeTaskLeftovers(dir string) error {
	bundles, err := filepath.Glob(filepath.Join(dir, "state", taskBundleGlob))
	if err != nil {
		return fmt.Errorf("nodelab: %w", err)
	}
	var errs []error
	remove := func(p string) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("nodelab: %w", err))
		}
	}
	for _, b := range bundles {
		if addr, err := os.ReadFile(filepath.Join(b, "address")); err == nil {
			sock := strings.TrimPrefix(strings.TrimSpace(string(addr)), "unix://")
			// Only a plain file name inside the shim socket directory: the bundle is data.
			if filepath.Dir(sock) == shimSocketDir && filepath.Base(sock) != "." {
				remove(sock)
			}
		}
		id := filepath.Base(b)
		cached, _ := filepath.Glob(filepath.Join(cniResultsDir, "*-"+id+"-*"))
		for _, p := range cached {
			remove(p)
		}
	}
	return errors.Join(errs...)
}
