// Package redislab starts private redis-server processes (Debian's, from
// hack/install-deps.sh) for integration tests and benchmarks: default
// configuration without persistence, on a free 127.0.0.1 port, killed when
// the test ends.
package redislab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/freeport"
	"github.com/smr-io/smr-cri/test/lab/testcheck"
)

// startTimeout bounds how long a fresh redis-server may take to accept
// connections: it loads no data, so this is scheduling delay on a loaded
// machine.
const startTimeout = 30 * time.Second

// Server is one running redis-server.
type Server struct {
	Addr string // 127.0.0.1:Port
	Port int
}

// Start runs a redis-server with extraArgs appended to its command line
// (e.g. "--requirepass", "x") and returns once it accepts connections. It
// skips tb unless SMR_INTEGRATION=1 and fails it when redis-server is
// missing or does not come up.
func Start(tb testing.TB, extraArgs ...string) Server {
	tb.Helper()
	testcheck.SkipUnlessIntegration(tb, "redis-server installed")
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not installed (apt-get install redis-server): %v", err)
	}
	port, err := freeport.Port() // redis-server binds it below
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log")}, extraArgs...)
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr // a bad argument is reported here, not in the log file
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{}) // closed once the process exited and its output is in stderr
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-done
	}
	s := Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port}
	if err := waitAccepting(s.Addr, startTimeout, done); err != nil {
		stop()
		if errors.Is(err, errExited) {
			err = fmt.Errorf("%w (%v)", err, waitErr)
		}
		log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		tb.Fatalf("redis-server %s: %v\n%s%s", strings.Join(args, " "), err, stderr.Bytes(), log)
	}
	tb.Cleanup(stop)
	return s
}

var errExited = errors.New("exited before accepting connections")

// waitAccepting polls addr until a TCP connection succeeds; it gives up
// after timeout, or with errExited as soon as done is closed (the server
// process is gone).
func waitAccepting(addr string, timeout time.Duration, done <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s accepts no connection after %v: %w", addr, timeout, err)
		}
		select {
		case <-done:
			return fmt.Errorf("%s: %w", addr, errExited)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
