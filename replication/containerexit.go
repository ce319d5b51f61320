package replication

import (
	"context"
	"fmt"
)

// CauseContainerExit: a container of the replica's pod exited (found by the
// node daemon polling the runtime's ContainerStatus); the app in it is gone
// and comes back empty when kubelet re-creates it.
const CauseContainerExit = "container-exit"

// exitRecord is an exit the repair path already handles: the next creation
// of that container (attempt+1) is the same restart, not another one.
type exitRecord struct {
	mb      *member
	attempt uint32
}

func exitKey(sandboxID, container string) string { return sandboxID + "\x00" + container }

// ContainerExited fences and repairs the member of sandboxID at once: one
// of its pod's containers (name, attempt, its runtime ID) exited, so no
// entry and no local read reaches a dead (then empty) app while kubelet
// re-creates it. The repair path waits for the new app; the
// CreateContainer of attempt+1 that follows is the same restart and does
// not repair again (exitRepairCovers). Sandboxes that are not attached are
// ignored.
func (m *Manager) ContainerExited(_ context.Context, sandboxID, containerID, name string, attempt uint32, detail string) {
	m.mu.Lock()
	mb := m.members[sandboxID]
	m.exitMu.Lock()
	for k, rec := range m.exits { // forget the exits of detached members
		if m.members[rec.mb.sandbox] != rec.mb {
			delete(m.exits, k)
		}
	}
	if mb != nil {
		if m.exits == nil {
			m.exits = map[string]exitRecord{}
		}
		m.exits[exitKey(sandboxID, name)] = exitRecord{mb: mb, attempt: attempt}
	}
	m.exitMu.Unlock()
	m.mu.Unlock()
	if mb == nil {
		return
	}
	m.repair(mb, Cause{Kind: CauseContainerExit,
		Detail: fmt.Sprintf("container %s (%s) attempt %d exited: %s", name, shortID(containerID), attempt, detail)})
}

// exitRepairCovers reports whether creating attempt of container in
// sandboxID is the restart of an exit already being repaired: then the
// repair that fenced the replica at the exit brings the new app to the log's
// state, and a second repair would only count against the repair-loop
// bound. A repair that ended meanwhile (failed: the restart came after the
// repair's deadline) is not covering: the new container is repaired again.
func (m *Manager) exitRepairCovers(sandboxID, container string, attempt uint32) bool {
	m.exitMu.Lock()
	key := exitKey(sandboxID, container)
	rec, ok := m.exits[key]
	if ok {
		delete(m.exits, key)
	}
	m.exitMu.Unlock()
	// Atomics only: this runs on kubelet's CreateContainer, and the
	// executor's lock may be held by a repair waiting for this very app.
	return ok && rec.attempt+1 == attempt && rec.mb.failed.Load() == nil && rec.mb.repairing.Load()
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
