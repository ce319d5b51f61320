package replication

import (
	"net/url"
	"path"
	"strings"
)

// reservedTarget reports whether the HTTP request named op ("METHOD
// target", framing.Request.Op) reaches the app's snapshot endpoint: the
// state of the whole replica must never be read or replaced by a client
// through the replicated port (only smr-cri, on its own app connection,
// calls it). The target is compared the way the app's router sees it:
// absolute-form reduced to its path, percent-decoding applied, dot segments
// and repeated slashes cleaned; sub-paths are reserved too. A target that
// does not decode is refused as well.
func reservedTarget(op, reserved string) bool {
	if reserved == "" {
		return false
	}
	_, target, _ := strings.Cut(op, " ")
	if i := strings.IndexAny(target, "?#"); i >= 0 {
		target = target[:i]
	}
	if !strings.HasPrefix(target, "/") {
		if u, err := url.Parse(target); err == nil && u.Host != "" {
			target = u.EscapedPath()
		}
	}
	p, err := url.PathUnescape(target)
	if err != nil {
		return true
	}
	for _, c := range []string{p, path.Clean("/" + p)} {
		if c == reserved || strings.HasPrefix(c, strings.TrimSuffix(reserved, "/")+"/") {
			return true
		}
	}
	return false
}
