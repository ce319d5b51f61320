package cri

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestListen covers the socket path cases: fresh path, stale socket, live
// server, a non-socket file, a relative path.
func TestListen(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string)
		wantErr string // substring; "" means success
		keep    bool   // the existing path must be left untouched on error
	}{
		{"missing dir is created with 0750", func(*testing.T, string) {}, "", false},
		{"stale socket is removed", func(t *testing.T, path string) {
			mustMkdir(t, filepath.Dir(path))
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false) // leave the file as a crashed process would
			_ = l.Close()
		}, "", false},
		{"live server is refused", func(t *testing.T, path string) {
			mustMkdir(t, filepath.Dir(path))
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close() })
		}, "another server answers on it", true},
		{"regular file is refused", func(t *testing.T, path string) {
			mustMkdir(t, filepath.Dir(path))
			if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is not a socket", true},
		{"directory is refused", func(t *testing.T, path string) {
			mustMkdir(t, path)
		}, "is not a socket", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "run", "smr-cri", "smr-cri.sock")
			tc.prepare(t, path)
			before, _ := os.Lstat(path)
			lis, err := Listen(path)
			if tc.wantErr != "" {
				if err == nil {
					_ = lis.Close()
					t.Fatalf("Listen succeeded, want error containing %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q does not contain %q", err, tc.wantErr)
				}
				after, serr := os.Lstat(path)
				if tc.keep && (serr != nil || !os.SameFile(before, after)) {
					t.Fatalf("existing path was touched: %v", serr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Listen: %v", err)
			}
			defer lis.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != SocketMode {
				t.Errorf("socket mode = %v, want socket with %v", fi.Mode(), SocketMode)
			}
			di, err := os.Stat(filepath.Dir(path))
			if err != nil {
				t.Fatal(err)
			}
			if before == nil && di.Mode().Perm() != 0o750 {
				t.Errorf("socket dir mode = %v, want 0750", di.Mode().Perm())
			}
			// It really accepts.
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("dial new socket: %v", err)
			}
			_ = c.Close()
		})
	}
}

func TestListenLiveServerIsErrSocketInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Listen(path); !errors.Is(err, ErrSocketInUse) {
		t.Fatalf("error = %v, want ErrSocketInUse", err)
	}
}

func TestListenRelativePath(t *testing.T) {
	if _, err := Listen("smr-cri.sock"); err == nil || !strings.Contains(err.Error(), "must be absolute") {
		t.Fatalf("error = %v, want 'must be absolute'", err)
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}
