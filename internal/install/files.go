package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"
)

// hostPath maps a path on the host (absolute) to the path under root.
func hostPath(root, p string) string {
	return filepath.Join(root, filepath.FromSlash(path.Clean("/"+p)))
}

// globHost expands a pattern on the host and returns host paths, sorted.
func globHost(root, pattern string) ([]string, error) {
	matches, err := filepath.Glob(hostPath(root, pattern))
	if err != nil {
		return nil, fmt.Errorf("glob %s: %w", pattern, err)
	}
	out := make([]string, 0, len(matches))
	for _, m := range matches {
		rel, err := filepath.Rel(root, m)
		if err != nil {
			return nil, fmt.Errorf("glob %s: %w", pattern, err)
		}
		out = append(out, "/"+filepath.ToSlash(rel))
	}
	return out, nil
}

// fileState is what a file looked like before a step changed it, so the step
// can be undone byte for byte.
type fileState struct {
	exists bool
	data   []byte
	mode   fs.FileMode
	uid    int
	gid    int
}

func readState(p string) (fileState, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return fileState{}, nil
	}
	if err != nil {
		return fileState{}, err
	}
	if !fi.Mode().IsRegular() {
		return fileState{}, fmt.Errorf("%s is not a regular file (%s)", p, fi.Mode().Type())
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return fileState{}, err
	}
	st := fileState{exists: true, data: data, mode: fi.Mode().Perm(), uid: -1, gid: -1}
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.uid, st.gid = int(s.Uid), int(s.Gid)
	}
	return st, nil
}

// restore puts a file back as it was (removing it if it did not exist).
func (s fileState) restore(p string) error {
	if !s.exists {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return writeFile(p, s.data, s.mode, s.uid, s.gid)
}

// WriteFileAtomic replaces p atomically with data and mode, keeping the
// running user as owner: writeFile for callers outside the installer.
func WriteFileAtomic(p string, data []byte, mode fs.FileMode) error {
	return writeFile(p, data, mode, -1, -1)
}

// writeFile replaces p atomically (temp file in the same directory, then
// rename), with the given mode and, when running as root, owner.
func writeFile(p string, data []byte, mode fs.FileMode, uid, gid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".smr-cri-tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if uid >= 0 && os.Geteuid() == 0 {
		if err := tmp.Chown(uid, gid); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}

// mkdirAll creates dir (with mode) and missing parents (0755) and returns the
// directories it created, deepest first, so an undo can remove exactly those.
func mkdirAll(dir string, mode fs.FileMode) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		m := fs.FileMode(0o755)
		if i == 0 {
			m = mode
		}
		if err := os.Mkdir(missing[i], m); err != nil {
			return missing[i+1:], err
		}
	}
	return missing, nil
}

// removeDirs removes directories created by mkdirAll (deepest first).
func removeDirs(dirs []string) error {
	var errs []error
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
