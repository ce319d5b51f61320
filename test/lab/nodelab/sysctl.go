package nodelab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// KernelTunables are the host-wide sysctls kubelet v1.37 sets at start
// (protectKernelDefaults: false; pkg/kubelet/cm setupKernelTunables), as paths under /proc/sys.
// Whoever starts a kubelet saves them first (SaveKernelTunables) and restores them after it
// stopped (Sysctls.Restore).
var KernelTunables = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// procSys is where sysctls live (a variable so tests can point it at a directory of their own).
var procSys = "/proc/sys"

// Sysctls maps sysctl paths (relative to /proc/sys, e.g. "kernel/panic") to their values.
type Sysctls map[string]string

// SaveKernelTunables reads the current value of every KernelTunables entry the kernel has.
func SaveKernelTunables() Sysctls {
	s := Sysctls{}
	for _, name := range KernelTunables {
		if b, err := os.ReadFile(filepath.Join(procSys, name)); err == nil {
			s[name] = strings.TrimSpace(string(b))
		}
	}
	return s
}

// Restore writes back every saved value that differs from the current one.
func (s Sysctls) Restore() error {
	names := make([]string, 0, len(s))
	for name := range s {
		names = append(names, name)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		p := filepath.Join(procSys, name)
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("nodelab: restore sysctl %s: %w", name, err))
			continue
		}
		if strings.TrimSpace(string(b)) == s[name] {
			continue
		}
		if err := os.WriteFile(p, []byte(s[name]), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("nodelab: restore sysctl %s=%s: %w", name, s[name], err))
		}
	}
	return errors.Join(errs...)
}

// SaveKernelTunablesTo writes SaveKernelTunables to file, for a later process's
// RestoreKernelTunablesFrom (kubelets that outlive the process that started them). An existing
// file is kept: it holds the values from before the first kubelet, and the current ones may be
// kubelet's if a restore failed since.
func SaveKernelTunablesTo(file string) error {
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	b, err := json.MarshalIndent(SaveKernelTunables(), "", "  ")
	if err != nil {
		return fmt.Errorf("nodelab: save sysctls: %w", err)
	}
	if err := os.WriteFile(file, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("nodelab: save sysctls: %w", err)
	}
	return nil
}

// RestoreKernelTunablesFrom restores the values SaveKernelTunablesTo wrote to file; no file
// means nothing was saved, so nothing is restored. Only KernelTunables entries are written,
// whatever else the file names.
func RestoreKernelTunablesFrom(file string) error {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nodelab: restore sysctls: %w", err)
	}
	var saved Sysctls
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("nodelab: restore sysctls: %s: %w", file, err)
	}
	known := Sysctls{}
	var unknown []string
	for name, v := range saved {
		if !slices.Contains(KernelTunables, name) {
			unknown = append(unknown, name)
			continue
		}
		known[name] = v
	}
	err = known.Restore()
	if len(unknown) > 0 {
		sort.Strings(unknown)
		err = errors.Join(err, fmt.Errorf("nodelab: restore sysctls: %s names sysctls that are not kubelet's: %s (left alone)", file, strings.Join(unknown, ", ")))
	}
	return err
}
