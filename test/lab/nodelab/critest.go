package nodelab

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// CritestResult is what one critest run (a ginkgo JSON report) says about each spec.
type CritestResult struct {
	Passed []string
	Failed []string
	// Flaky passed only after a retry (-ginkgo.flake-attempts); they are also in Passed.
	Flaky []string
	// Skipped are the selected specs that skipped themselves at run time, with the reason they
	// gave (specs left out by -ginkgo.focus/-ginkgo.skip are not listed).
	Skipped map[string]string
}

// ginkgo's JSON report: a list of suite reports; only the fields read here.
type ginkgoSuite struct {
	SpecReports []struct {
		ContainerHierarchyTexts []string
		LeafNodeText            string
		LeafNodeType            string
		State                   string
		NumAttempts             int
		Failure                 struct{ Message string }
	}
}

// ParseCritestReport reads a ginkgo JSON report (critest -ginkgo.json-report=FILE) and sorts
// its specs into passed, failed (failed, panicked, timedout, interrupted, aborted) and skipped
// (skipped, pending). Setup nodes (BeforeSuite ...) count only when they fail.
func ParseCritestReport(r io.Reader) (CritestResult, error) {
	var suites []ginkgoSuite
	if err := json.NewDecoder(r).Decode(&suites); err != nil {
		return CritestResult{}, fmt.Errorf("critest report: %w", err)
	}
	if len(suites) == 0 {
		return CritestResult{}, fmt.Errorf("critest report: no suite in report")
	}
	res := CritestResult{Skipped: map[string]string{}}
	for _, s := range suites {
		for _, sp := range s.SpecReports {
			name := strings.TrimSpace(strings.Join(append(append([]string(nil), sp.ContainerHierarchyTexts...), sp.LeafNodeText), " "))
			if sp.LeafNodeType != "It" {
				name = sp.LeafNodeType + " " + name
			}
			switch sp.State {
			case "passed":
				if sp.LeafNodeType == "It" {
					res.Passed = append(res.Passed, name)
					if sp.NumAttempts > 1 {
						res.Flaky = append(res.Flaky, name)
					}
				}
			case "skipped", "pending":
				if sp.LeafNodeType == "It" && sp.Failure.Message != "" {
					res.Skipped[name] = sp.Failure.Message
				}
			case "failed", "panicked", "timedout", "interrupted", "aborted":
				res.Failed = append(res.Failed, name)
			default:
				return CritestResult{}, fmt.Errorf("critest report: spec %q has unknown state %q", name, sp.State)
			}
		}
	}
	sort.Strings(res.Passed)
	sort.Strings(res.Failed)
	return res, nil
}

// ParseCritestReportFile is ParseCritestReport on a file.
func ParseCritestReportFile(path string) (CritestResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return CritestResult{}, fmt.Errorf("critest report: %w", err)
	}
	defer f.Close()
	res, err := ParseCritestReport(f)
	if err != nil {
		return res, fmt.Errorf("%s: %w", path, err)
	}
	return res, nil
}

// CompareCritest writes both runs' failures, the difference of the passed sets and the summary
// line `critest: direct P passed F failed; via smr-cri P passed F failed`. It reports whether the
// passed sets are identical.
func CompareCritest(w io.Writer, direct, via CritestResult) bool {
	// Specs that skipped themselves with the same reason in both runs are listed once.
	both := map[string]bool{}
	for _, spec := range sortedKeys(direct.Skipped) {
		if reason, ok := via.Skipped[spec]; ok && reason == direct.Skipped[spec] {
			both[spec] = true
			fmt.Fprintf(w, "  skipped at run time (both runs): %s — %s\n", spec, oneLine(reason))
		}
	}
	for _, run := range []struct {
		name string
		res  CritestResult
	}{{"direct", direct}, {"via smr-cri", via}} {
		for _, spec := range sortedKeys(run.res.Skipped) {
			if !both[spec] {
				fmt.Fprintf(w, "  %s skipped at run time: %s — %s\n", run.name, spec, oneLine(run.res.Skipped[spec]))
			}
		}
		for _, f := range run.res.Flaky {
			fmt.Fprintf(w, "  %s passed on retry: %s\n", run.name, f)
		}
		for _, f := range run.res.Failed {
			fmt.Fprintf(w, "  %s FAILED: %s\n", run.name, f)
		}
	}
	onlyDirect := minus(direct.Passed, via.Passed)
	onlyVia := minus(via.Passed, direct.Passed)
	for _, s := range onlyDirect {
		fmt.Fprintf(w, "  DIFFERENCE: passed directly but not via smr-cri: %s\n", s)
	}
	for _, s := range onlyVia {
		fmt.Fprintf(w, "  DIFFERENCE: passed via smr-cri but not directly: %s\n", s)
	}
	fmt.Fprintf(w, "critest: direct %d passed %d failed; via smr-cri %d passed %d failed\n",
		len(direct.Passed), len(direct.Failed), len(via.Passed), len(via.Failed))
	return len(onlyDirect) == 0 && len(onlyVia) == 0
}

func minus(a, b []string) []string {
	in := map[string]bool{}
	for _, s := range b {
		in[s] = true
	}
	var out []string
	for _, s := range a {
		if !in[s] {
			out = append(out, s)
		}
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// oneLine folds a (possibly multi-line) skip message onto one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
