package nodelab

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A crashed lab's shim sockets and CNI results are removed; other tasks' files and addresses
// outside the shim socket directory are left alone.
func TestRemoveTaskLeftovers(t *testing.T) {
	lab, shims, results := t.TempDir(), t.TempDir(), t.TempDir()
	oldShims, oldResults := shimSocketDir, cniResultsDir
	shimSocketDir, cniResultsDir = shims, results
	t.Cleanup(func() { shimSocketDir, cniResultsDir = oldShims, oldResults })

	write := func(p, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bundle := filepath.Join(lab, "state", "io.containerd.runtime.v2.task", "k8s.io")
	write(filepath.Join(bundle, "aaa", "address"), "unix://"+filepath.Join(shims, "hash1"))
	write(filepath.Join(bundle, "bbb", "address"), "unix:///etc/passwd") // outside: never removed
	for _, f := range []string{"hash1", "hash-other"} {
		write(filepath.Join(shims, f), "")
	}
	for _, f := range []string{"smr-cni0-aaa-eth0", "cni-loopback-aaa-lo", "smr-cni0-zzz-eth0"} {
		write(filepath.Join(results, f), "{}")
	}
	if err := removeTaskLeftovers(lab); err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string][]string{shims: {"hash-other"}, results: {"smr-cni0-zzz-eth0"}} {
		entries, _ := os.ReadDir(dir)
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s holds %v, want %v", dir, got, want)
		}
	}
	if _, err := os.Stat("/etc/passwd"); err != nil {
		t.Fatal(err)
	}
	if err := removeTaskLeftovers(filepath.Join(lab, "missing")); err != nil {
		t.Fatalf("missing lab: %v", err)
	}
}
