package manifests

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestKindUp runs hack/kind-up.sh for real (the go build, the image tar)
// with stand-ins for kind and kubectl that record their command lines: every
// step but the kind/kubectl calls themselves is exercised, and those calls
// are checked here (hack/kind-config.yaml by TestKindConfig).
func TestKindUp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds smr-cri; skipped with -short")
	}
	dir := t.TempDir()
	bin, out, log := filepath.Join(dir, "bin"), filepath.Join(dir, "out"), filepath.Join(dir, "calls.log")
	os.MkdirAll(bin, 0o755)
	fake := "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> " + log + "\n" +
		// `kind load image-archive` must get a readable file.
		"if [ \"$1 $2\" = \"load image-archive\" ]; then test -s \"$5\" || exit 3; fi\n"
	for _, tool := range []string{"kind", "kubectl"} {
		if err := os.WriteFile(filepath.Join(bin, tool), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not in PATH: %v", err)
	}
	cmd := exec.Command(filepath.Join(repo, "hack/kind-up.sh"))
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+filepath.Dir(goBin)+":/usr/bin:/bin", "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/kind-up.sh: %v\n%s", err, b)
	}
	calls, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"kind get clusters",
		"kind create cluster --name smr --config hack/kind-config.yaml --wait 5m",
		"kind load image-archive --name smr " + out + "/smr-cri-image.tar",
		"kubectl --context kind-smr apply -k manifests/",
		"kubectl --context kind-smr -n smr-system rollout status ds/smr-cri --timeout 10m",
	}, "\n") + "\n"
	if string(calls) != want {
		t.Errorf("kind/kubectl calls:\n%s\nwant:\n%s", calls, want)
	}
	// The image holds the freshly built binary under the DaemonSet's tag.
	tag, _ := name.NewTag("localhost/smr-cri:dev")
	img, err := tarball.ImageFromPath(filepath.Join(out, "smr-cri-image.tar"), &tag)
	if err != nil {
		t.Fatalf("image tar: %v", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil || cfg.OS != "linux" || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/usr/local/bin/smr-cri" {
		t.Errorf("image config %+v, %v", cfg, err)
	}
	// Static: the image has no libc, and the node runs it too.
	f, err := elf.Open(filepath.Join(out, "smr-cri"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("smr-cri is dynamically linked; build with CGO_ENABLED=0")
		}
	}
	if b, err := exec.Command(filepath.Join(out, "smr-cri"), "help").CombinedOutput(); err != nil || !strings.Contains(string(b), "install") {
		t.Errorf("built binary: %v\n%s", err, b)
	}
}
