package cri

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// SocketMode is the mode of the CRI socket: root and the socket's group.
const SocketMode fs.FileMode = 0o660

// ErrSocketInUse is returned when another server answers on the socket path.
var ErrSocketInUse = errors.New("socket in use")

// Listen opens the CRI unix socket at path. A missing parent directory is
// created with mode 0750. A socket file left behind by a dead process is
// removed; a path held by a live server, or one that is not a socket, is an
// error and is never touched. The socket gets SocketMode.
func Listen(path string) (*net.UnixListener, error) {
	return ListenMode(path, SocketMode)
}

// ListenMode is Listen with another mode for the socket (e.g. 0600 for a
// root-only endpoint beside the CRI socket).
func ListenMode(path string, mode fs.FileMode) (*net.UnixListener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("listen socket %q: path must be absolute", path)
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create socket directory: %w", err)
		}
		// Exactly 0750 whatever the umask; an existing directory is left as is.
		if err := os.Chmod(dir, 0o750); err != nil {
			return nil, fmt.Errorf("set mode of socket directory: %w", err)
		}
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("set mode of %s: %w", path, err)
	}
	return lis, nil
}

// removeStaleSocket removes path if it is a unix socket nobody accepts on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("listen socket %s exists and is not a socket (%s): refusing to remove it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("listen socket %s: %w: another server answers on it", path, ErrSocketInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("listen socket %s: cannot tell whether it is stale: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}
