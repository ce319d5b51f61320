package raftcore

// Where a member is reached: the routing table (Group.peers) has two
// writers, and which one wins is defined here.
//
//   - Reported addresses come from outside the group: GroupConfig.Peers,
//     then SetPeerAddr (in smr-cri serve, the pod watch). A watch repeats a
//     pod's address on every update of the pod (status, readiness, labels),
//     and after a pod moved it keeps repeating the old address until the
//     kubelet reports the new one, which can take tens of seconds. So only
//     a reported address that differs from the one the same source reported
//     last for that member is news; a repeat changes nothing.
//   - Learned addresses come from the member itself: a transport that
//     authenticated an inbound stream as that member passes on the address
//     the member says it listens at (LearnPeerAddr). A restarted member on
//     a new address dials out as soon as it campaigns, so the others reach
//     it at once instead of waiting for the watch.
//
// The most recent news wins: an address learned from the member overrides
// an older report, and a report that is news (the pod really moved again)
// overrides an older learned address. A stale repeat of the old address,
// the failure this order exists for, is never news. If a report that is
// news is itself behind (an intermediate address of a member that moved
// twice), the member's live stream corrects it: the transport passes the
// member's address on again while the stream lasts (see
// transport.relearnEvery).

// SetPeerAddr changes where member id is reached, without a membership
// change (e.g. a rescheduled pod got a new IP). A repeat of the address
// last set for id (or given in GroupConfig.Peers) is not news and does not
// undo an address learned since from the member itself (see peeraddr.go).
func (g *Group) SetPeerAddr(id uint64, addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if prev, ok := g.reported[id]; ok && prev == addr {
		return
	}
	g.reported[id] = addr
	g.peers[id] = addr
}

// learnPeerAddr routes member id to addr, the address the member announced
// on a stream the transport authenticated as that member. Only members
// already in the routing table are learned (a transport without TLS
// authenticates nobody, so an unknown id could be anything); this member's
// own address is never changed from outside.
func (g *Group) learnPeerAddr(id uint64, addr string) {
	if id == g.id || addr == "" {
		return
	}
	g.mu.Lock()
	prev, ok := g.peers[id]
	if ok && prev != addr {
		g.peers[id] = addr
	}
	g.mu.Unlock()
	if ok && prev != addr {
		g.log.Info("peer address learned from the peer's own stream", "peer", id, "addr", addr, "was", prev)
	}
}

// PeerAddrLearner is implemented by *Node (the Handler transports get): a
// transport that authenticated an inbound stream as member `member` of
// `group` tells it the address that member announced it listens at. See
// peeraddr.go for how this orders against SetPeerAddr.
type PeerAddrLearner interface {
	LearnPeerAddr(group string, member uint64, addr string)
}

// LearnPeerAddr implements PeerAddrLearner.
func (n *Node) LearnPeerAddr(group string, member uint64, addr string) {
	if g, ok := n.Group(group); ok {
		g.learnPeerAddr(member, addr)
	}
}

var _ PeerAddrLearner = (*Node)(nil)
