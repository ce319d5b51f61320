package nodelab

import (
	"bytes"
	"strings"
	"testing"
)

const sampleReport = `[{"SuitePath":"/x","SpecReports":[
 {"ContainerHierarchyTexts":["[k8s.io] PodSandbox","runtime should support basic operations on PodSandbox"],"LeafNodeText":"runtime should support running PodSandbox [Conformance]","LeafNodeType":"It","State":"passed"},
 {"ContainerHierarchyTexts":["[k8s.io] Container OOM"],"LeafNodeText":"flaky one","LeafNodeType":"It","State":"passed","NumAttempts":2},
 {"ContainerHierarchyTexts":["[k8s.io] Networking"],"LeafNodeText":"runtime should support port mapping with host port","LeafNodeType":"It","State":"failed"},
 {"ContainerHierarchyTexts":["[k8s.io] Image Manager"],"LeafNodeText":"public image with tag should be pulled","LeafNodeType":"It","State":"skipped"},
 {"ContainerHierarchyTexts":["[k8s.io] Container OOM"],"LeafNodeText":"should be OOMKilled","LeafNodeType":"It","State":"skipped","Failure":{"Message":"no memory cgroup"}},
 {"ContainerHierarchyTexts":null,"LeafNodeText":"","LeafNodeType":"SynchronizedBeforeSuite","State":"passed"}
]}]`

func TestParseCritestReport(t *testing.T) {
	res, err := ParseCritestReport(strings.NewReader(sampleReport))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Passed) != 2 || !strings.Contains(res.Passed[1], "running PodSandbox") {
		t.Errorf("passed = %v", res.Passed)
	}
	if len(res.Flaky) != 1 || res.Flaky[0] != "[k8s.io] Container OOM flaky one" {
		t.Errorf("flaky = %v", res.Flaky)
	}
	if len(res.Failed) != 1 || !strings.HasPrefix(res.Failed[0], "[k8s.io] Networking runtime should support port mapping") {
		t.Errorf("failed = %v", res.Failed)
	}
	if len(res.Skipped) != 1 || res.Skipped["[k8s.io] Container OOM should be OOMKilled"] != "no memory cgroup" {
		t.Errorf("skipped = %v", res.Skipped)
	}
}

func TestParseCritestReportBadInput(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"not json", "hello", "critest report"},
		{"no suite", "[]", "no suite"},
		{"unknown state", `[{"SpecReports":[{"LeafNodeText":"x","LeafNodeType":"It","State":"weird"}]}]`, "unknown state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseCritestReport(strings.NewReader(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestCompareCritest(t *testing.T) {
	tests := []struct {
		name       string
		direct     CritestResult
		via        CritestResult
		wantSame   bool
		wantOutput []string
	}{
		{
			name:       "identical",
			direct:     CritestResult{Passed: []string{"a", "b"}, Failed: []string{"c"}},
			via:        CritestResult{Passed: []string{"a", "b"}, Failed: []string{"c"}},
			wantSame:   true,
			wantOutput: []string{"critest: direct 2 passed 1 failed; via smr-cri 2 passed 1 failed\n"},
		},
		{
			name:     "via loses one",
			direct:   CritestResult{Passed: []string{"a", "b"}},
			via:      CritestResult{Passed: []string{"a"}, Failed: []string{"b"}},
			wantSame: false,
			wantOutput: []string{"passed directly but not via smr-cri: b",
				"critest: direct 2 passed 0 failed; via smr-cri 1 passed 1 failed\n"},
		},
		{
			name:     "skips listed once when equal",
			direct:   CritestResult{Passed: []string{"a"}, Skipped: map[string]string{"s": "no apparmor", "t": "x"}},
			via:      CritestResult{Passed: []string{"a"}, Skipped: map[string]string{"s": "no apparmor", "t": "y"}},
			wantSame: true,
			wantOutput: []string{"skipped at run time (both runs): s — no apparmor\n",
				"direct skipped at run time: t — x\n", "via smr-cri skipped at run time: t — y\n"},
		},
		{
			name:       "via gains one",
			direct:     CritestResult{Passed: []string{"a"}, Failed: []string{"b"}},
			via:        CritestResult{Passed: []string{"a", "b"}},
			wantSame:   false,
			wantOutput: []string{"passed via smr-cri but not directly: b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if got := CompareCritest(&buf, tt.direct, tt.via); got != tt.wantSame {
				t.Errorf("same = %v, want %v", got, tt.wantSame)
			}
			for _, w := range tt.wantOutput {
				if !strings.Contains(buf.String(), w) {
					t.Errorf("output %q lacks %q", buf.String(), w)
				}
			}
			// The summary is the last line.
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if !strings.HasPrefix(lines[len(lines)-1], "critest: direct ") {
				t.Errorf("last line = %q", lines[len(lines)-1])
			}
		})
	}
}
