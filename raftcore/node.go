package raftcore

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"go.etcd.io/raft/v3/raftpb"
)

// Node is the process-wide ordering node: it owns the Transport and hosts
// any number of groups, each with its own raft state machine, WAL and
// snapshots under DataDir/<group>.
type Node struct {
	cfg NodeConfig
	log *slog.Logger

	mu     sync.RWMutex
	groups map[string]*Group
	closed bool
}

// NewNode validates cfg, creates DataDir and starts the transport.
func NewNode(cfg NodeConfig) (*Node, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("raftcore: create data dir: %w", err)
	}
	n := &Node{cfg: c, log: c.Logger, groups: map[string]*Group{}}
	if err := c.Transport.Start(n); err != nil {
		return nil, fmt.Errorf("raftcore: start transport: %w", err)
	}
	return n, nil
}

// StartGroup opens (or creates) the group's durable state, replays it into
// sm and starts the group's raft and apply goroutines.
func (n *Node) StartGroup(cfg GroupConfig, sm StateMachine) (*Group, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if sm == nil {
		return nil, fmt.Errorf("%w: group %s: nil StateMachine", ErrInvalidConfig, cfg.Name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrStopped
	}
	if _, ok := n.groups[cfg.Name]; ok {
		return nil, fmt.Errorf("%w: %s", ErrGroupExists, cfg.Name)
	}
	g, err := startGroup(n, cfg, sm)
	if err != nil {
		return nil, fmt.Errorf("raftcore: start group %s: %w", cfg.Name, err)
	}
	n.groups[cfg.Name] = g
	return g, nil
}

// Group returns a started group by name.
func (n *Node) Group(name string) (*Group, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	g, ok := n.groups[name]
	return g, ok
}

func (n *Node) forget(g *Group) {
	n.mu.Lock()
	if n.groups[g.name] == g {
		delete(n.groups, g.name)
	}
	n.mu.Unlock()
}

// DeleteGroup stops the group if it runs here and removes its data
// directory (WAL and snapshots): use it when this member is gone for good
// (its pod deleted, or after RemoveMember). Irreversible.
func (n *Node) DeleteGroup(name string) error {
	if !groupNameRE.MatchString(name) {
		return fmt.Errorf("%w: group name %q", ErrInvalidConfig, name)
	}
	if g, ok := n.Group(name); ok {
		if err := g.Stop(); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(filepath.Join(n.cfg.DataDir, name)); err != nil {
		return fmt.Errorf("raftcore: delete group %s: %w", name, err)
	}
	return nil
}

// Close stops every group and the transport.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	gs := make([]*Group, 0, len(n.groups))
	for _, g := range n.groups {
		gs = append(gs, g)
	}
	n.mu.Unlock()
	var errs []error
	for _, g := range gs {
		errs = append(errs, g.Stop())
	}
	errs = append(errs, n.cfg.Transport.Close())
	return errors.Join(errs...)
}

// Deliver implements Handler.
func (n *Node) Deliver(group string, msgs []*raftpb.Message) {
	if g, ok := n.Group(group); ok {
		g.deliver(msgs)
	}
}

// ReceiveSnapshot implements SnapshotReceiver.
func (n *Node) ReceiveSnapshot(group string, m *raftpb.Message, body io.Reader) error {
	g, ok := n.Group(group)
	if !ok {
		return fmt.Errorf("raftcore: snapshot for group %s, which does not run here", group)
	}
	if m.GetType() != raftpb.MsgSnap {
		return fmt.Errorf("raftcore: group %s: %s is not a snapshot", group, m.GetType())
	}
	return g.receiveSnapshot(m, body)
}

var _ SnapshotReceiver = (*Node)(nil)

// ReportUnreachable implements Handler.
func (n *Node) ReportUnreachable(group string, to uint64) {
	if g, ok := n.Group(group); ok {
		g.report(report{to: to, unreachable: true})
	}
}

// ReportSnapshot implements Handler.
func (n *Node) ReportSnapshot(group string, to uint64, ok bool) {
	if g, found := n.Group(group); found {
		g.report(report{to: to, snapshot: true, snapOK: ok})
	}
}

// raftLogger adapts slog to raft.Logger.
type raftLogger struct{ l *slog.Logger }

func (r raftLogger) Debug(v ...any)              { r.l.Debug(fmt.Sprint(v...)) }
func (r raftLogger) Debugf(f string, v ...any)   { r.l.Debug(fmt.Sprintf(f, v...)) }
func (r raftLogger) Info(v ...any)               { r.l.Info(fmt.Sprint(v...)) }
func (r raftLogger) Infof(f string, v ...any)    { r.l.Info(fmt.Sprintf(f, v...)) }
func (r raftLogger) Warning(v ...any)            { r.l.Warn(fmt.Sprint(v...)) }
func (r raftLogger) Warningf(f string, v ...any) { r.l.Warn(fmt.Sprintf(f, v...)) }
func (r raftLogger) Error(v ...any)              { r.l.Error(fmt.Sprint(v...)) }
func (r raftLogger) Errorf(f string, v ...any)   { r.l.Error(fmt.Sprintf(f, v...)) }
func (r raftLogger) Fatal(v ...any)              { r.l.Error(fmt.Sprint(v...)); os.Exit(1) }
func (r raftLogger) Fatalf(f string, v ...any)   { r.l.Error(fmt.Sprintf(f, v...)); os.Exit(1) }
func (r raftLogger) Panic(v ...any)              { panic(fmt.Sprint(v...)) }
func (r raftLogger) Panicf(f string, v ...any)   { panic(fmt.Sprintf(f, v...)) }
