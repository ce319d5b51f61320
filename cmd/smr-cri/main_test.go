package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The test binary doubles as smr-cri when this variable is set, so the tests
// exercise the real main (signals, exit codes) without a separate build.
const runMainEnv = "SMR_CRI_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func smrCRI(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	return cmd
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestExitCodes(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"serve", "--help"}, 0, "--runtime-endpoint"},
		{[]string{"version"}, 0, "smr-cri"},
		{[]string{"nonsense"}, 2, `unknown subcommand "nonsense"`},
		{nil, 2, "no subcommand given"},
		{[]string{"serve", "--runtime-endpoint", "tcp://127.0.0.1:1"}, 1, "only unix:// endpoints"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, err := smrCRI(tc.args...).CombinedOutput()
			if got := exitCode(err); got != tc.code {
				t.Fatalf("exit code %d, want %d; output:\n%s", got, tc.code, out)
			}
			if !strings.Contains(string(out), tc.out) {
				t.Fatalf("output does not contain %q:\n%s", tc.out, out)
			}
		})
	}
}

// TestSignalsStopGracefully starts `smr-cri serve`, waits until it answers,
// sends the signal and checks a clean exit that removes the socket.
func TestSignalsStopGracefully(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "run", "smr-cri.sock")
			cmd := smrCRI("serve", "--listen", sock, "--runtime-endpoint", "unix://"+filepath.Join(dir, "none.sock"))
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill() }()
			conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// WaitForReady waits for the socket; the answer is the proxy's own
			// Unavailable since no runtime runs.
			_, err = runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{}, grpc.WaitForReady(true))
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "smr-cri: container runtime") {
				t.Fatalf("Version: %v, want the proxy's Unavailable", err)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("smr-cri exited with %v after %v, want 0", err, sig)
			}
			if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("socket left after %v: %v", sig, err)
			}
		})
	}
}
