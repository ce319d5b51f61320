package testcheck

import (
	"os"
	"testing"
)

// IntegrationEnv is the environment variable that enables integration tests
// (hack/test.sh sets it).
const IntegrationEnv = "SMR_INTEGRATION"

// SkipUnlessIntegration skips tb unless SMR_INTEGRATION=1. needs says what
// the test uses beyond that (e.g. "redis-server installed"); once enabled, a
// missing prerequisite must fail the test, not skip it.
func SkipUnlessIntegration(tb testing.TB, needs string) {
	tb.Helper()
	if os.Getenv(IntegrationEnv) != "1" {
		tb.Skipf("integration test: run with %s=1 (hack/test.sh does); needs %s", IntegrationEnv, needs)
	}
}
