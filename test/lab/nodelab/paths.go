// Package nodelab runs the real node parts that smr-cri sits between — containerd, runc, CNI and
// kubelet — on one machine without a registry or systemd: it builds the test images as
// docker-archive tars, writes a containerd configuration, starts containerd in a directory of its
// own and tears everything down again (processes, mounts, network namespaces, the CNI bridge).
// Tests and the hack/lab tool use it; see /work/shared/NODE-LAB.md for the recipes it follows.
package nodelab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModulePath is the Go module the repository root declares; RepoRoot looks for it.
const ModulePath = "github.com/smr-io/smr-cri"

// RepoRoot returns the repository root: the nearest directory at or above the working directory
// whose go.mod declares ModulePath (nested build-only modules under hack/tools are skipped).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("nodelab: working directory: %w", err)
	}
	for {
		if isRepoRoot(dir) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("nodelab: no go.mod declaring module %s at or above the working directory", ModulePath)
		}
		dir = parent
	}
}

func isRepoRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[0] == "module" {
			return fields[1] == ModulePath
		}
	}
	return false
}

// CacheDir is where hack/install-deps.sh puts the tools it builds (crictl, critest, kubelet):
// $SMR_CACHE if set, else <repo root>/_cache.
func CacheDir() (string, error) {
	if d := os.Getenv("SMR_CACHE"); d != "" {
		return d, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "_cache"), nil
}

// ErrMissing marks a prerequisite that is not installed; the message says how to install it.
var ErrMissing = errors.New("missing prerequisite (run hack/install-deps.sh as root)")

// CachedTool returns the path of a tool hack/install-deps.sh built into the cache (kubelet,
// crictl, critest), or an error wrapping ErrMissing.
func CachedTool(name string) (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(cache, "bin", name)
	if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("nodelab: %s not found at %s: %w", name, p, ErrMissing)
	}
	return p, nil
}

// HostTool returns the path of a program from the machine's packages (containerd, ctr, runc,
// nsenter, ...), or an error wrapping ErrMissing.
func HostTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("nodelab: %s not on PATH: %w", name, ErrMissing)
	}
	return p, nil
}

// CheckRoot fails unless the process runs as root, which containerd, runc and kubelet need.
func CheckRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("nodelab: must run as root (euid %d): containerd, runc and kubelet need it", os.Geteuid())
	}
	return nil
}
