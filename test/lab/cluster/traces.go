package cluster

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
)

// LeaderChange is one leader election of a replication group, as the raft library logs it in
// smr-cri's log on the winner's node ("<member> became leader at term <term>").
type LeaderChange struct {
	At     string // the log line's time
	Member int
	Term   int
	Node   string // the node whose smr-cri logged it
}

var leaderLine = regexp.MustCompile(`^time=(\S+) .*msg="(\d+) became leader at term (\d+)" group=(\S+)`)

// LeaderChanges reads every node's smr-cri log for the elections of group (<namespace>.<name>),
// lowest term first; the last one is the current leader.
func (cl *Cluster) LeaderChanges(group string) ([]LeaderChange, error) {
	var out []LeaderChange
	for _, n := range cl.Nodes {
		path := cl.smrLog(n.Name)
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		out = append(out, parseLeaderChanges(bufio.NewScanner(f), group, n.Name)...)
		f.Close()
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Term < out[j].Term })
	return out, nil
}

func parseLeaderChanges(sc *bufio.Scanner, group, node string) []LeaderChange {
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var out []LeaderChange
	for sc.Scan() {
		m := leaderLine.FindStringSubmatch(sc.Text())
		if m == nil || m[4] != group {
			continue
		}
		member, _ := strconv.Atoi(m[2])
		term, _ := strconv.Atoi(m[3])
		out = append(out, LeaderChange{At: m[1], Member: member, Term: term, Node: node})
	}
	return out
}

// SessionEnd is one session ended by an ordered END entry, as a node's smr-cri logs it when it
// applies the entry ("session ended on every replica").
type SessionEnd struct {
	Session string
	Index   uint64
	Node    string
}

var sessionEndLine = regexp.MustCompile(`msg="session ended on every replica".*? group=(\S+) session=(\S+) index=(\d+)`)

// SessionEnds reads every node's smr-cri log for the sessions of group that END entries ended.
func (cl *Cluster) SessionEnds(group string) ([]SessionEnd, error) {
	var out []SessionEnd
	for _, n := range cl.Nodes {
		f, err := os.Open(cl.smrLog(n.Name))
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		out = append(out, parseSessionEnds(bufio.NewScanner(f), group, n.Name)...)
		f.Close()
	}
	return out, nil
}

func parseSessionEnds(sc *bufio.Scanner, group, node string) []SessionEnd {
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var out []SessionEnd
	for sc.Scan() {
		m := sessionEndLine.FindStringSubmatch(sc.Text())
		if m == nil || m[1] != group {
			continue
		}
		idx, _ := strconv.ParseUint(m[3], 10, 64)
		out = append(out, SessionEnd{Session: m[2], Index: idx, Node: node})
	}
	return out
}

// MembershipChange is one conf change a group's leader made (internal/membership's
// "membership change" log line).
type MembershipChange struct {
	At     string // the log line's time (RFC 3339, one clock for all nodes)
	Op     string // add-learner, promote, remove, transfer-leadership
	Member int
	Node   string
}

var membershipLine = regexp.MustCompile(`^time=(\S+) .*msg="membership change" group=(\S+) op=(\S+) member=(\d+)`)

// MembershipChanges reads every node's smr-cri log for the membership changes of group, oldest
// first.
func (cl *Cluster) MembershipChanges(group string) ([]MembershipChange, error) {
	var out []MembershipChange
	for _, n := range cl.Nodes {
		f, err := os.Open(cl.smrLog(n.Name))
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		out = append(out, parseMembershipChanges(sc, group, n.Name)...)
		f.Close()
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	return out, nil
}

func parseMembershipChanges(sc *bufio.Scanner, group, node string) []MembershipChange {
	var out []MembershipChange
	for sc.Scan() {
		m := membershipLine.FindStringSubmatch(sc.Text())
		if m == nil || m[2] != group {
			continue
		}
		id, _ := strconv.Atoi(m[4])
		out = append(out, MembershipChange{At: m[1], Op: m[3], Member: id, Node: node})
	}
	return out
}
