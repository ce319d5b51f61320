package testcheck

import (
	"fmt"
	"os"
	"testing"
)

// ReportOutcome records an observed outcome (key=value) for a script that
// summarises a test run, e.g. hack/test-security.sh: the file named by
// $SMR_SECURITY_REPORT gets one line per call; without it only the test log.
func ReportOutcome(tb testing.TB, key, value string) {
	tb.Logf("observed %s=%s", key, value)
	path := os.Getenv("SMR_SECURITY_REPORT")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		tb.Errorf("report %s: %v", key, err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s=%s\n", key, value)
}
