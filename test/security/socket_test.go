package security

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// syncBuffer is a bytes.Buffer the child's output goroutine and the test
// may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// smrCRIBinary is $SMR_CRI_BIN (hack/test-security.sh builds it) or a
// fresh build of ./cmd/smr-cri.
func smrCRIBinary(t *testing.T) string {
	if p := os.Getenv("SMR_CRI_BIN"); p != "" {
		return p
	}
	out := filepath.Join(t.TempDir(), "smr-cri")
	cmd := exec.Command("go", "build", "-o", out, "github.com/smr-io/smr-cri/cmd/smr-cri")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build smr-cri: %v\n%s", err, b)
	}
	return out
}

// The real `smr-cri serve` process creates its CRI socket owned by the
// user running it (root on a node), mode 0660 (no access for others), in a
// directory it creates 0750; as root, a process running as nobody cannot
// connect to it even when the directory is open.
func TestCRISocketMode(t *testing.T) {
	integration(t)
	bin := smrCRIBinary(t)
	for _, tc := range []struct {
		name    string
		openDir bool // pre-create the directory 0755 so only the socket's own mode protects it
	}{{"created-dir", false}, {"open-dir", true}} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			if err := os.Chmod(base, 0o755); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(base, "run")
			if tc.openDir {
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			sock := filepath.Join(dir, "smr-cri.sock")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var stderr syncBuffer
			// Replication stays on (as on a node) with its data in the test's directory.
			cmd := exec.CommandContext(ctx, bin, "serve", "--listen", sock, "--runtime-endpoint", "unix://"+filepath.Join(base, "no-runtime.sock"),
				"--data-dir", filepath.Join(base, "data"))
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cancel(); cmd.Wait() }()
			var fi fs.FileInfo
			deadline := time.Now().Add(30 * time.Second) // failure bound only
			for {
				var err error
				if fi, err = os.Lstat(sock); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("socket %s never appeared: %v\n%s", sock, err, stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			// The mode is set right after bind; wait for the server's
			// startup line so we look after that.
			for !strings.Contains(stderr.String(), "smr-cri serving") && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			fi, _ = os.Lstat(sock)
			st := fi.Sys().(*syscall.Stat_t)
			mode := fi.Mode().Perm()
			observed := fmt.Sprintf("%04o", mode)
			if fi.Mode().Type() != fs.ModeSocket || mode&0o117 != 0 {
				observed = "too-open-" + observed
				t.Errorf("socket %s: type %v mode %04o, want a socket with at most 0660", sock, fi.Mode().Type(), mode)
			}
			if int(st.Uid) != os.Geteuid() {
				observed = fmt.Sprintf("owner-uid-%d", st.Uid)
				t.Errorf("socket owned by uid %d, want %d", st.Uid, os.Geteuid())
			}
			if !tc.openDir {
				if di, err := os.Stat(dir); err != nil || di.Mode().Perm() != 0o750 {
					t.Errorf("socket directory mode: %v %v, want 0750", di.Mode().Perm(), err)
				}
			}
			if os.Geteuid() == 0 {
				if st.Uid != 0 {
					t.Errorf("socket owned by uid %d, want root", st.Uid)
				}
				socat, err := exec.LookPath("socat")
				if err != nil {
					t.Fatalf("socat is needed to connect as an unprivileged user: %v (hack/install-deps.sh)", err)
				}
				// nobody (65534) may not connect.
				dial := exec.Command(socat, "-u", "OPEN:/dev/null", "UNIX-CONNECT:"+sock)
				dial.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
				out, err := dial.CombinedOutput()
				if err == nil || !strings.Contains(string(out), "ermission denied") {
					observed = "connectable-by-others"
					t.Errorf("uid 65534 connecting to %s: err=%v output=%s, want permission denied", sock, err, out)
				}
			}
			if tc.openDir {
				testcheck.ReportOutcome(t, "socket-mode", observed)
			}
		})
	}
}
