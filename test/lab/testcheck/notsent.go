package testcheck

import (
	"errors"
	"net"
	"strings"
)

// NotSent reports an error that proves a client's request never reached the
// replicated service, so a write failed for certain (an unknown outcome is a
// write that may or may not have taken effect, which a linearizability
// checker must try both ways): the connection could not be made (e.g. a
// Service with no ready endpoint while every replica rebuilds), or smr-cri
// refused the client before reading any request (its refusal by a replica
// that does not serve ends "; try another replica": replication/CONTRACT.md,
// "Readiness").
func NotSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return strings.HasSuffix(err.Error(), "; try another replica")
}
