package netintercept

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNotNetns is wrapped by errors about a network namespace path that is missing or is not a
// network namespace.
var ErrNotNetns = errors.New("not a network namespace")

// CheckNetnsPath verifies that path names a network namespace (a bind mount under
// /var/run/netns, /proc/<pid>/ns/net, ...): it exists and lives on nsfs.
func CheckNetnsPath(path string) error {
	if path == "" {
		return fmt.Errorf("netns path is empty: %w", ErrNotNetns)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			err = fs.ErrNotExist
		}
		return fmt.Errorf("netns path %q: %w: %w", path, ErrNotNetns, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("netns path %q is not on nsfs (filesystem magic %#x): %w", path, st.Type, ErrNotNetns)
	}
	return nil
}

// inNetns runs fn on an OS thread switched into the network namespace at path. Sockets fn
// creates stay in that namespace. It runs on a goroutine of its own, locked to its thread; if
// the thread cannot be switched back to its original namespace it stays locked, so Go discards
// it when the goroutine ends instead of running other code in the wrong namespace.
func inNetns(path string, fn func() error) error {
	if err := CheckNetnsPath(path); err != nil {
		return err
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %q: %w", path, err)
	}
	defer target.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter netns %q: %w", path, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and dies with this goroutine.
			done <- errors.Join(fnErr, fmt.Errorf("restore netns after %q: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// checkAddr requires a TCP network and a literal IP (or an empty host, for listeners), so that
// no name lookup runs on another thread, in another namespace.
func checkAddr(network, addr string, allowEmptyHost bool) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return fmt.Errorf("network %q: only tcp, tcp4 and tcp6 are supported", network)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "" && allowEmptyHost {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("address %q: host must be a literal IP: %w", addr, err)
	}
	return nil
}

// ListenInNetns opens a TCP listener inside the network namespace at path. The listener keeps
// accepting in that namespace whatever goroutine uses it.
func ListenInNetns(path, network, addr string) (net.Listener, error) {
	if err := checkAddr(network, addr, true); err != nil {
		return nil, fmt.Errorf("listen in netns %q: %w", path, err)
	}
	var l net.Listener
	err := inNetns(path, func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		if l != nil {
			l.Close()
		}
		return nil, fmt.Errorf("listen %s %s in netns %q: %w", network, addr, path, err)
	}
	return l, nil
}

// DialInNetns connects from inside the network namespace at path, for example to the pod's app
// at 127.0.0.1:6379.
func DialInNetns(ctx context.Context, path, network, addr string) (net.Conn, error) {
	if err := checkAddr(network, addr, false); err != nil {
		return nil, fmt.Errorf("dial in netns %q: %w", path, err)
	}
	// No dual-stack racing: every socket must be created on the namespace's thread.
	d := net.Dialer{FallbackDelay: -1}
	var c net.Conn
	err := inNetns(path, func() (err error) {
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("dial %s %s in netns %q: %w", network, addr, path, err)
	}
	return c, nil
}
