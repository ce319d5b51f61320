package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smr-io/smr-cri/hack/internal/cmdmain"
)

const report = `[{"SpecReports":[
 {"ContainerHierarchyTexts":["[k8s.io] PodSandbox"],"LeafNodeText":"runs","LeafNodeType":"It","State":"passed"},
 {"ContainerHierarchyTexts":["[k8s.io] Networking"],"LeafNodeText":"maps ports","LeafNodeType":"It","State":"%s"}]}]`

func TestRunBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "usage"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"images without output", []string{"images"}, "usage"},
		{"up without dir", []string{"containerd-up"}, "usage"},
		{"up with two dirs", []string{"containerd-up", "a", "b"}, "usage"},
		{"up with bad flag", []string{"containerd-up", "--owner", "x", "d"}, "invalid value"},
		{"down without dir", []string{"containerd-down"}, "usage"},
		{"report with one file", []string{"critest-report", "a.json"}, "usage"},
		{"report with missing file", []string{"critest-report", "/nonexistent/a.json", "/nonexistent/b.json"}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), tt.args, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run(%q) error = %v, want containing %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestCritestReport(t *testing.T) {
	dir := t.TempDir()
	write := func(name, state string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Replace(report, "%s", state, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	passed, failed := write("passed.json", "passed"), write("failed.json", "failed")
	tests := []struct {
		name     string
		direct   string
		via      string
		wantErr  bool
		wantLast string
	}{
		{"same", passed, passed, false, "critest: direct 2 passed 0 failed; via smr-cri 2 passed 0 failed"},
		{"via lost one", passed, failed, true, "critest: direct 2 passed 0 failed; via smr-cri 1 passed 1 failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), []string{"critest-report", tt.direct, tt.via}, &out, &errOut)
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, cmdmain.ErrQuiet)) {
				t.Fatalf("error = %v, want error %v (quiet)", err, tt.wantErr)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if last := lines[len(lines)-1]; last != tt.wantLast {
				t.Fatalf("last line = %q, want %q", last, tt.wantLast)
			}
		})
	}
}
