package nodelab

import (
	"context"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// IntegrationEnv is the environment variable that enables integration tests.
const IntegrationEnv = testcheck.IntegrationEnv

// RequireIntegration skips t unless SMR_INTEGRATION=1; when enabled, a missing prerequisite (not
// root) fails the test instead of skipping it.
func RequireIntegration(t testing.TB) {
	t.Helper()
	testcheck.SkipUnlessIntegration(t, "root")
	if err := CheckRoot(); err != nil {
		t.Fatal(err)
	}
}

// StartContainerdT starts a private containerd with the lab images in a temporary directory and
// stops it (with full cleanup) when the test ends, failed or not.
func StartContainerdT(t testing.TB) *Containerd {
	t.Helper()
	RequireIntegration(t)
	dir := t.TempDir() // registered first, so removed after Stop below has unmounted everything
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := StartContainerd(ctx, ContainerdOptions{Dir: dir, Log: testWriter{t}})
	if err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	})
	return c
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}
