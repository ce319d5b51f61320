package raftcore_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/test/lab/raft/kvtest"
)

// MemberCheck accepts everything until the group is stored, then only the
// group's current members; other groups are always accepted.
func TestMemberCheck(t *testing.T) {
	c, _, lead := startCluster(t, kvtest.Options{Members: 3})
	var grp atomic.Pointer[raftcore.Group]
	isMember := raftcore.MemberCheck(&grp, kvtest.GroupName, time.Second)
	tests := []struct {
		name   string
		stored bool
		group  string
		member uint64
		want   bool
	}{
		{name: "not started: unknown member accepted", group: kvtest.GroupName, member: 9, want: true},
		{name: "member", stored: true, group: kvtest.GroupName, member: 2, want: true},
		{name: "not a member", stored: true, group: kvtest.GroupName, member: 9, want: false},
		{name: "other group accepted", stored: true, group: "other", member: 9, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.stored {
				grp.Store(c.Member(lead).Group)
			}
			if got := isMember(tc.group, tc.member); got != tc.want {
				t.Fatalf("isMember(%q, %d) = %v, want %v", tc.group, tc.member, got, tc.want)
			}
		})
	}
}
