// Package freeport hands out loopback TCP ports that a child process can bind
// later. The usual trick (listen on :0, close, pass the port on) races with
// the kernel: the closed port is back in the ephemeral pool and the next
// outbound connection or :0 listener may take it before the child binds it.
// Ports from here lie outside the kernel's ephemeral range, so only an
// explicit bind can collide with them.
package freeport

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The window we pick from: below the usual ephemeral range (32768-60999) and
// above the ports the local cluster's components bind (6443, 10248-10259).
const (
	defaultLow  = 20000
	defaultHigh = 29999
)

var (
	mu   sync.Mutex
	next int // next candidate offset into the window
)

// Addr returns "127.0.0.1:port" for a port that was free a moment ago and is
// not in the ephemeral range.
func Addr() (string, error) {
	p, err := Port()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// Port returns a free port as described for Addr. Successive calls in one
// process never return the same port until the window wraps.
func Port() (int, error) {
	low, high, err := window()
	if err != nil {
		return 0, err
	}
	size := high - low + 1
	mu.Lock()
	defer mu.Unlock()
	if next == 0 {
		// Spread concurrent processes (parallel test binaries) over the window.
		next = os.Getpid()*37%size + 1
	}
	for range size {
		p := low + next%size
		next++
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // in use by someone else
		}
		l.Close()
		return p, nil
	}
	return 0, fmt.Errorf("freeport: no free port in %d-%d", low, high)
}

// window returns the port range to pick from, shifted above the ephemeral
// range if the kernel's range overlaps the default window.
func window() (low, high int, err error) {
	elow, ehigh, err := ephemeralRange("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, err
	}
	return pickWindow(elow, ehigh)
}

func pickWindow(elow, ehigh int) (low, high int, err error) {
	switch {
	case defaultHigh < elow || defaultLow > ehigh:
		return defaultLow, defaultHigh, nil
	case ehigh <= 65535-1000:
		return ehigh + 1, 65535, nil
	case elow > 12000:
		return 11000, elow - 1, nil
	}
	return 0, 0, fmt.Errorf("freeport: ephemeral range %d-%d leaves no window for fixed ports", elow, ehigh)
}

func ephemeralRange(path string) (low, high int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("freeport: read ephemeral port range: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("freeport: %s: want two numbers, got %q", path, b)
	}
	if low, err = strconv.Atoi(f[0]); err == nil {
		high, err = strconv.Atoi(f[1])
	}
	if err != nil {
		return 0, 0, fmt.Errorf("freeport: %s: %w", path, err)
	}
	return low, high, nil
}

// AddrT is Addr for tests and benchmarks: it fails tb instead of returning an error.
func AddrT(tb testing.TB) string {
	tb.Helper()
	addr, err := Addr()
	if err != nil {
		tb.Fatal(err)
	}
	return addr
}

// PortT is Port for tests and benchmarks: it fails tb instead of returning an error.
func PortT(tb testing.TB) int {
	tb.Helper()
	p, err := Port()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// Addrs returns n distinct addresses as Addr does.
func Addrs(n int) ([]string, error) {
	out := make([]string, n)
	for i := range out {
		a, err := Addr()
		if err != nil {
			return nil, err
		}
		out[i] = a
	}
	return out, nil
}
