package raftcore

import (
	"sync"
	"sync/atomic"
	"time"
)

// MemberCheck returns an isMember function for the transport's peer
// authorization (pki.NewMember): it answers for group from the membership of
// the Group in *grp, which may be stored after the function is built (the
// transport starts before the group). Other groups, and group while *grp is
// still nil, are accepted: raft drops what is not its own.
//
// It is asked for every received frame and Status copies the membership, so
// the membership is re-read at most once per maxAge: a removed member's
// streams are refused within maxAge.
func MemberCheck(grp *atomic.Pointer[Group], group string, maxAge time.Duration) func(group string, member uint64) bool {
	var mu sync.Mutex
	var members map[uint64]string
	var readAt time.Time
	return func(name string, member uint64) bool {
		g := grp.Load()
		if g == nil || name != group {
			return true
		}
		mu.Lock()
		defer mu.Unlock()
		if now := time.Now(); members == nil || now.Sub(readAt) > maxAge {
			members, readAt = g.Status().Members, now
		}
		_, ok := members[member]
		return ok
	}
}
