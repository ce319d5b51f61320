// Package nodestatus is what `smr-cri status` and `kubectl smr status` show:
// one row per raft member running on a node (group, member, pod, role, log
// positions, replica state, disk use), its JSON form, the table printer, and
// the root-only unix socket `smr-cri serve` answers it on.
//
// The socket is the only way in: it is mode 0600 (root) beside the CRI
// socket, never a TCP port, so nobody on the node network can read it.
// Cluster-wide views reach it through the API server (kubectl exec into the
// DaemonSet pod, which mounts the socket's directory; docs/security.md).
package nodestatus

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Replica states (the State column).
const (
	// StateServing: the replica's app is at the log's state and it serves.
	StateServing = "serving"
	// StateRebuilding: the replica is catching up (entries wait for its app,
	// or it repairs itself) and does not serve yet.
	StateRebuilding = "rebuilding"
	// StateBroken: the replica diverged or cannot follow the log any more.
	StateBroken = "broken"
	// StateUnknown: a member of the group (in its leader's membership) that
	// no node reports: its pod, node or smr-cri is down. Only cluster-wide
	// views (AddMissing) produce it.
	StateUnknown = "unknown"
)

// Member is one raft member on one node.
type Member struct {
	// Node is filled by cluster-wide aggregation (kubectl smr status).
	Node     string `json:"node,omitempty"`
	Group    string `json:"group"`
	MemberID uint64 `json:"member"`
	// Pod is namespace/name of the replica pod.
	Pod string `json:"pod"`
	// Role is raft's view: leader, follower, candidate, pre-candidate.
	Role    string `json:"role"`
	Term    uint64 `json:"term"`
	Leader  uint64 `json:"leader"` // 0: none known
	Commit  uint64 `json:"commit"`
	Applied uint64 `json:"applied"`
	// Lag is Commit - Applied: committed entries this replica's app has not
	// executed yet.
	Lag      uint64 `json:"lag"`
	Sessions int    `json:"sessions"`
	// State is StateServing, StateRebuilding or StateBroken; StateDetail
	// says why when it is not serving.
	State       string `json:"state"`
	StateDetail string `json:"stateDetail,omitempty"`
	// SnapshotIndex is the log index of the member's newest raft snapshot
	// (0: none yet).
	SnapshotIndex uint64 `json:"snapshotIndex"`
	// LogBytes is the size of the member's WAL and snapshot files on disk.
	LogBytes int64 `json:"logBytes"`
	// Peers are the group's member IDs as this member knows them.
	Peers []uint64 `json:"peers,omitempty"`
	// Learners are the members among Peers that do not vote yet (added by
	// a scale up, catching up before their promotion).
	Learners []uint64 `json:"learners,omitempty"`
	// CatchingUp: this member joined with an empty data directory and does
	// not vote until it has the group's committed log.
	CatchingUp bool `json:"catchingUp,omitempty"`
}

// Healthy reports whether the member serves and knows a leader.
func (m Member) Healthy() bool { return m.State == StateServing && m.Leader != 0 }

// Problem says in a few words what is wrong with an unhealthy member.
func (m Member) Problem() string {
	var p []string
	if m.State != StateServing {
		s := m.State
		if m.StateDetail != "" {
			s += ": " + m.StateDetail
		}
		p = append(p, s)
	}
	if m.Leader == 0 && m.State != StateUnknown {
		p = append(p, "no leader")
	}
	return strings.Join(p, "; ")
}

// Report is one node's answer.
type Report struct {
	Node    string    `json:"node"`
	Time    time.Time `json:"time"`
	Members []Member  `json:"members"`
}

// AddMissing adds a StateUnknown row for every member that a reported
// member lists in Peers (the leader's view when there is one) but no row
// stands for: a cluster-wide view shows a member whose node, pod or
// smr-cri is down instead of leaving it out.
func AddMissing(ms []Member) []Member {
	type key struct {
		group string
		id    uint64
	}
	have := map[key]bool{}
	peers := map[string][]uint64{} // by group: the leader's view, else the widest
	leading := map[string]bool{}
	for _, m := range ms {
		have[key{m.Group, m.MemberID}] = true
		switch {
		case m.Role == "leader" && !leading[m.Group]:
			peers[m.Group], leading[m.Group] = m.Peers, true
		case !leading[m.Group] && len(m.Peers) > len(peers[m.Group]):
			peers[m.Group] = m.Peers
		}
	}
	out := slices.Clone(ms)
	for group, ids := range peers {
		for _, id := range ids {
			if !have[key{group, id}] {
				out = append(out, Member{Group: group, MemberID: id, Pod: "?", Node: "?", Role: "?",
					State: StateUnknown, StateDetail: "no node reports this member (pod, node or smr-cri down?)"})
			}
		}
	}
	Sort(out)
	return out
}

// Sort orders members by group, then member ID, then node.
func Sort(ms []Member) {
	slices.SortFunc(ms, func(a, b Member) int {
		if c := strings.Compare(a.Group, b.Group); c != 0 {
			return c
		}
		if a.MemberID != b.MemberID {
			if a.MemberID < b.MemberID {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Node, b.Node)
	})
}

// TableOptions choose the table's extra columns.
type TableOptions struct {
	// Node adds a NODE column (cluster-wide view).
	Node bool
	// Color highlights unhealthy rows in red and leaders in bold (terminals).
	Color bool
}

const (
	ansiRed   = "\x1b[31m"
	ansiBold  = "\x1b[1m"
	ansiReset = "\x1b[0m"
)

// WriteTable prints members (sorted by Sort) as an aligned table: a blank
// line between groups, the leader's row marked with '*', and every
// unhealthy row ending in "<- " and what is wrong. Empty input prints a
// line saying so.
func WriteTable(w io.Writer, members []Member, o TableOptions) error {
	if len(members) == 0 {
		_, err := fmt.Fprintln(w, "no replicated members")
		return err
	}
	ms := slices.Clone(members)
	Sort(ms)
	// Align first, colour whole lines afterwards: escape codes inside
	// tabwriter cells would count as width.
	var buf strings.Builder
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	head := []string{"GROUP", "MEMBER", "POD"}
	if o.Node {
		head = append(head, "NODE")
	}
	head = append(head, "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG", "SESSIONS", "STATE", "SNAPSHOT", "LOG")
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	colors := []string{""}
	for i, m := range ms {
		if i > 0 && ms[i-1].Group != m.Group {
			fmt.Fprintln(tw, strings.Repeat("\t", len(head)))
			colors = append(colors, "")
		}
		id := strconv.FormatUint(m.MemberID, 10)
		if m.Role == "leader" {
			id = "*" + id
		}
		row := []string{m.Group, id, m.Pod}
		if o.Node {
			row = append(row, m.Node)
		}
		leader := "-"
		if m.Leader != 0 {
			leader = strconv.FormatUint(m.Leader, 10)
		}
		if m.State == StateUnknown { // nobody reports it: no numbers to show
			row = append(row, m.Role, "-", "-", "-", "-", "-", "-", m.State, "-", "-")
		} else {
			row = append(row, m.Role, u(m.Term), leader, u(m.Commit), u(m.Applied), u(m.Lag), strconv.Itoa(m.Sessions),
				m.State, u(m.SnapshotIndex), Bytes(m.LogBytes))
		}
		line := strings.Join(row, "\t") + "\t"
		color := ""
		switch {
		case !m.Healthy():
			line += "<- " + m.Problem()
			color = ansiRed
		case m.Role == "leader":
			color = ansiBold
		}
		fmt.Fprintln(tw, line)
		colors = append(colors, color)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	for i, l := range lines {
		l = strings.TrimRight(l, " ")
		if o.Color && i < len(colors) && colors[i] != "" {
			l = colors[i] + l + ansiReset
		}
		if _, err := io.WriteString(w, l+"\n"); err != nil {
			return err
		}
	}
	return nil
}

func u(v uint64) string { return strconv.FormatUint(v, 10) }

// Bytes prints a byte count in binary units (1.5Mi).
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	v, suffix := float64(n), ""
	for _, s := range []string{"Ki", "Mi", "Gi", "Ti", "Pi"} {
		v /= unit
		suffix = s
		if v < unit {
			break
		}
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + suffix
}
