package nodelab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeProcSys points procSys at a directory holding KernelTunables with the given values
// (name -> value; a name missing from values is absent, as on a kernel without it).
func fakeProcSys(t *testing.T, values map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, v := range values {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := procSys
	procSys = dir
	t.Cleanup(func() { procSys = old })
	return dir
}

func readSysctl(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// What kubelet writes at start (setupKernelTunables) is undone by Restore, across processes
// through the saved file; a second save keeps the first values.
func TestKernelTunablesSaveRestore(t *testing.T) {
	orig := map[string]string{"vm/overcommit_memory": "0", "vm/panic_on_oom": "0", "kernel/panic": "0",
		"kernel/panic_on_oops": "0", "kernel/keys/root_maxkeys": "200", "kernel/keys/root_maxbytes": "20000"}
	kubelet := map[string]string{"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1",
		"kernel/keys/root_maxkeys": "1000000", "kernel/keys/root_maxbytes": "25000000"}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, dir string) error
	}{
		{"in process", func(t *testing.T, dir string) error {
			saved := SaveKernelTunables()
			kubeletStarts(t, dir, kubelet)
			return saved.Restore()
		}},
		{"through a file, saved twice", func(t *testing.T, dir string) error {
			file := filepath.Join(t.TempDir(), "sysctls.json")
			if err := SaveKernelTunablesTo(file); err != nil {
				return err
			}
			kubeletStarts(t, dir, kubelet)
			if err := SaveKernelTunablesTo(file); err != nil { // a restart after a failed restore
				return err
			}
			return RestoreKernelTunablesFrom(file)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeProcSys(t, orig)
			if err := tc.run(t, dir); err != nil {
				t.Fatal(err)
			}
			for name, want := range orig {
				if got := readSysctl(t, dir, name); got != want {
					t.Errorf("%s = %s after restore, want %s", name, got, want)
				}
			}
		})
	}
}

func kubeletStarts(t *testing.T, dir string, values map[string]string) {
	t.Helper()
	for name, v := range values {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRestoreKernelTunablesFromBadInput(t *testing.T) {
	for _, tc := range []struct {
		name    string
		file    string // contents; "" = no file
		wantErr string
		want    map[string]string // sysctl values afterwards
	}{
		{"no file: nothing saved, nothing restored", "", "", map[string]string{"kernel/panic": "10"}},
		{"not JSON", "{", "sysctls.json", map[string]string{"kernel/panic": "10"}},
		{"a sysctl that is not kubelet's is left alone", `{"kernel/panic": "0", "kernel/sysrq": "1"}`,
			"not kubelet's: kernel/sysrq", map[string]string{"kernel/panic": "0", "kernel/sysrq": "0"}},
		{"a saved sysctl the kernel lacks", `{"kernel/panic_on_oops": "0"}`, "kernel/panic_on_oops", map[string]string{"kernel/panic": "10"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeProcSys(t, map[string]string{"kernel/panic": "10", "kernel/sysrq": "0"})
			file := filepath.Join(t.TempDir(), "sysctls.json")
			if tc.file != "" {
				if err := os.WriteFile(file, []byte(tc.file), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := RestoreKernelTunablesFrom(file)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
			}
			for name, want := range tc.want {
				if got := readSysctl(t, dir, name); got != want {
					t.Errorf("%s = %s, want %s", name, got, want)
				}
			}
		})
	}
}
