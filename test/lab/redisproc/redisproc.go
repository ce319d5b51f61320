// Package redisproc runs private redis-server processes for tests: one per
// call, on a free loopback port, without persistence, stopped at the test's
// end.
package redisproc

import (
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/test/lab/freeport"
)

// Start runs redis-server on a free 127.0.0.1 port and returns its address
// once it accepts connections. A missing redis-server fails the test (the
// integration suite needs it: apt-get install redis-server).
func Start(tb testing.TB, extraArgs ...string) string {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not installed (apt-get install redis-server): %v", err)
	}
	port, err := freeport.Port() // redis-server binds it later
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	cmd := exec.Command(bin, append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log")}, extraArgs...)...)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	tb.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case <-exited:
			tb.Fatalf("redis-server at %s exited at start (log in %s)", addr, dir)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redis-server at %s not accepting connections: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
