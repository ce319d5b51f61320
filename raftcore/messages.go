package raftcore

import (
	"errors"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Messages to and from peers: inbound batches and transport reports are
// queued for the raft goroutine; outbound messages are grouped per
// destination and handed to the Transport.

type report struct {
	to                            uint64
	unreachable, snapshot, snapOK bool
}

func (g *Group) deliver(msgs []*raftpb.Message) {
	select {
	case g.recvc <- msgs:
	default: // overloaded: drop, raft retransmits
	}
}

func (g *Group) report(r report) {
	select {
	case g.reportc <- r:
	default:
	}
}

func (g *Group) step(ms []*raftpb.Message) {
	for _, m := range ms {
		// Local message types must never arrive over the network.
		if raft.IsLocalMsg(m.GetType()) || !g.quarantineStep(m) {
			continue
		}
		g.noteLostLog(m)
		g.clampHeartbeatCommit(m)
		if err := g.rn.Step(m); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
			g.log.Debug("step", "type", m.GetType().String(), "from", m.GetFrom(), "err", err)
		}
	}
}

func (g *Group) applyReport(r report) {
	if r.unreachable {
		g.ncfg.Metrics.incUnreachable(g.name)
		g.rn.ReportUnreachable(r.to)
	}
	if r.snapshot {
		st := raft.SnapshotFinish
		if !r.snapOK {
			st = raft.SnapshotFailure
		}
		g.rn.ReportSnapshot(r.to, st)
	}
}

// send groups messages per destination and hands each batch to the
// transport, which never blocks.
func (g *Group) send(msgs []*raftpb.Message) {
	if len(msgs) == 0 {
		return
	}
	for _, m := range msgs {
		g.sendBuf[m.GetTo()] = append(g.sendBuf[m.GetTo()], m)
	}
	for to, ms := range g.sendBuf {
		g.mu.Lock()
		addr, ok := g.peers[to]
		g.mu.Unlock()
		if !ok {
			g.rn.ReportUnreachable(to)
			for _, m := range ms {
				if m.GetType() == raftpb.MsgSnap {
					g.rn.ReportSnapshot(to, raft.SnapshotFailure)
				}
			}
		} else if ms = g.prepareSnapshots(to, addr, ms); len(ms) > 0 {
			g.ncfg.Transport.Send(g.name, to, addr, ms)
		}
		delete(g.sendBuf, to)
	}
}
