package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ownerFile, in a member's directory, holds the UID of the StatefulSet whose
// pod last ran the member there.
const ownerFile = "statefulset-uid"

// setAsideStaleLog keeps a member of a re-created StatefulSet from resuming
// the raft log of the deleted one: a StatefulSet deleted and created again
// under the same name has the same group key, so its member N finds member
// N's old directory on a node where the old set ran. When the directory's
// owner (ownerFile) is another StatefulSet UID, the raft data (dir/<group>)
// is renamed to <group>.stale-<old uid> (kept for an operator, never read
// again) and the member starts empty, in the new group. A directory without
// an owner (written before owners were recorded) is adopted as is. It
// returns the path set aside, "" when none.
func setAsideStaleLog(dir, group, uid string) (string, error) {
	if uid == "" {
		return "", nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("member directory: %w", err)
	}
	path := filepath.Join(dir, ownerFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return "", fmt.Errorf("read the member directory's owner: %w", err)
	case strings.TrimSpace(string(b)) == uid:
		return "", nil
	}
	var aside string
	if old := strings.TrimSpace(string(b)); old != "" {
		from := filepath.Join(dir, group)
		aside = filepath.Join(dir, group+".stale-"+filepath.Base(old))
		if err := os.Rename(from, aside); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("set aside the raft log of deleted StatefulSet %s: %w", old, err)
		} else if err != nil {
			aside = ""
		}
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(uid+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("record the member directory's owner: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("record the member directory's owner: %w", err)
	}
	return aside, nil
}
