package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/replication/framing"
	"github.com/smr-io/smr-cri/replication/podcontract"
)

// Interceptor redirects a pod's inbound app ports to smr-cri's listener in
// the pod's network namespace; *netintercept.Interceptor satisfies it.
type Interceptor interface {
	Apply(ctx context.Context, netnsPath string, spec netintercept.Spec) (netintercept.Result, error)
	Cleanup(ctx context.Context, netnsPath string) (netintercept.Result, error)
}

var _ Interceptor = (*netintercept.Interceptor)(nil)

// GroupStarter starts the raft group of an attached pod with sm as its state
// machine (membership from spec.Peers or the Kubernetes API, transport at
// the pod IP and spec.RaftPort), and returns a function that stops it.
type GroupStarter func(ctx context.Context, pod podcontract.Pod, spec Spec, sm raftcore.StateMachine) (Orderer, func() error, error)

// ManagerConfig configures a Manager. Listen, Dialer and OriginalPort
// default to the netintercept implementations (pod network namespaces).
type ManagerConfig struct {
	Intercept  Interceptor
	StartGroup GroupStarter
	// ListenerPort is where smr-cri accepts the redirected connections inside
	// each pod's netns (default 15006); it must not be an app or raft port.
	ListenerPort int
	// ProbeSources are node addresses whose connections bypass the redirect
	// (kubelet probes reach the app directly).
	ProbeSources []netip.Addr
	Listen       func(netnsPath, addr string) (net.Listener, error)
	Dialer       func(netnsPath string) AppDialer
	OriginalPort func(net.Conn) (int, error)
	Trace        *Tracer
	Log          *slog.Logger
	Metrics      *Metrics
	// Executor tunes every pod's executor (timeouts, queue bound).
	Executor ExecutorConfig
	// ClientBudget bounds the memory of every pod's client connections
	// together (nil: no bound).
	ClientBudget *ClientBudget
	// MemberDir is where a member keeps its progress record (beside its
	// raft data); nil: no record, a restart replays the whole log.
	MemberDir func(Spec) string
	// SandboxRunning reports whether a sandbox still runs (containerd is the
	// source of truth); nil: a member found under another sandbox is
	// assumed replaced.
	SandboxRunning func(ctx context.Context, sandboxID string) (bool, error)
	// Events records repairs and divergence on the replica pods
	// (repair_events.go); nil records nothing.
	Events podevents.Recorder
	// Readiness publishes each replica's verdict as its pod's
	// smr.io/replica-serving condition (readiness.go); nil: none.
	Readiness ReadinessPublisher
	// ReadinessInterval (default DefaultReadinessInterval) and
	// ReadinessMaxLag (default DefaultReadinessMaxLag) tune the verdict.
	ReadinessInterval time.Duration
	ReadinessMaxLag   uint64
}

// DefaultListenerPort is the in-pod port of smr-cri's client listener.
const DefaultListenerPort = 15006

// Manager attaches and detaches pods: it is the replication side of the CRI
// proxy's hooks. It keeps only what it started; containerd stays the source
// of truth for which sandboxes exist. Its one registry of members is keyed
// by sandbox.
type Manager struct {
	cfg     ManagerConfig
	mu      sync.Mutex
	members map[string]*member // by sandbox ID
	// exits handled by a repair, until the container's next creation
	// (containerexit.go).
	exitMu sync.Mutex
	exits  map[string]exitRecord
}

// member is one replica on this host: the pod's replication (listener,
// executor, raft group) and its progress record. It owns the replica's
// lifecycle: start (Attach), resume (the progress record), stop (Detach).
type member struct {
	sandbox string
	ref     podevents.Pod // the pod, for its events
	prog    *Progress     // nil without MemberDir
	netns   string
	spec    Spec
	// start starts its replication on a view of ln (the redirect is in
	// place already).
	start func() (*Pod, error)
	// ln is the client listener in the pod's netns, open from Attach to
	// stop: a rebuild hands it to the next run (handoff.go).
	ln *handoffListener

	life    sync.Mutex // serializes stop and rebuild
	pod     *Pod
	stopped bool
	// repairs remembers recent repairs by cause (under life): a loop
	// leaves the member broken.
	repairs repairHistory
	// stopChecks ends the background checks of the pod's app (eviction policy).
	stopChecks context.CancelFunc
	// pending: a rebuild is scheduled (under life); gaveUp: the repair loop
	// bound was hit, nothing rebuilds this member any more.
	pending, gaveUp bool
	// cause of the scheduled rebuild (under life).
	cause Cause
	// donor is a healthy member's snapshot the next start restores instead
	// of this member's own (under life; taken by that start).
	donor *donorState

	// Readiness (readiness.go), read without life: cur is the running
	// pod; repairing from a repair's start until its app caught up;
	// failed once a rebuild could not start the replica again.
	cur         atomic.Pointer[Pod]
	repairing   atomic.Bool
	repairCause atomic.Pointer[Cause]
	failed      atomic.Pointer[error]
	readyKick   chan struct{}
	rmu         sync.Mutex // orders repairEnded after markRepairing
}

// Repair loop bound: more than maxRepairs repairs for the same cause within
// repairWindow is a loop (the same failure again and again, e.g. an app
// that runs out of memory replaying the log, or a divergence a repair
// does not fix). Repairs for different causes are unrelated faults (a
// container restart, then a slow app) and do not add up.
const (
	maxRepairs   = 3
	repairWindow = 10 * time.Minute
)

// repairHistory is the start times of a member's recent repairs by cause.
type repairHistory map[string][]time.Time

// add records a repair for cause at now and returns how many repairs for
// that cause started within repairWindow, this one included.
func (h *repairHistory) add(now time.Time, cause string) int {
	if *h == nil {
		*h = repairHistory{}
	}
	recent := (*h)[cause][:0]
	for _, t := range (*h)[cause] {
		if now.Sub(t) < repairWindow {
			recent = append(recent, t)
		}
	}
	(*h)[cause] = append(recent, now)
	return len((*h)[cause])
}

// stop ends the pod (sessions close through the log, the group stops),
// then closes the progress record.
func (mb *member) stop() error {
	mb.life.Lock()
	defer mb.life.Unlock()
	mb.stopped = true
	if mb.stopChecks != nil {
		mb.stopChecks()
	}
	err := mb.pod.Stop()
	if mb.ln != nil {
		err = errors.Join(err, mb.ln.Close())
	}
	if mb.prog != nil {
		err = errors.Join(err, mb.prog.Close())
	}
	return err
}

// NewManager validates cfg and fills its defaults.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if cfg.Intercept == nil || cfg.StartGroup == nil {
		return nil, errors.New("replication: manager needs Intercept and StartGroup")
	}
	if cfg.ListenerPort == 0 {
		cfg.ListenerPort = DefaultListenerPort
	}
	if _, err := netintercept.CheckPort("listener port", cfg.ListenerPort); err != nil {
		return nil, fmt.Errorf("replication: %w", err)
	}
	if cfg.Listen == nil {
		cfg.Listen = func(netns, addr string) (net.Listener, error) {
			return netintercept.ListenInNetns(netns, "tcp", addr)
		}
	}
	if cfg.Dialer == nil {
		cfg.Dialer = func(netns string) AppDialer { return NetnsDialer{Path: netns} }
	}
	if cfg.OriginalPort == nil {
		cfg.OriginalPort = OriginalPort
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ReadinessInterval <= 0 {
		cfg.ReadinessInterval = DefaultReadinessInterval
	}
	if cfg.ReadinessMaxLag == 0 {
		cfg.ReadinessMaxLag = DefaultReadinessMaxLag
	}
	return &Manager{cfg: cfg, members: map[string]*member{}}, nil
}

// Attach starts replicating a pod if its labels ask for it (otherwise it is
// a no-op). A broken contract is returned as an error naming each bad key,
// for the pod's events; nothing is left behind on failure. Attaching an
// attached sandbox again is a no-op.
func (m *Manager) Attach(ctx context.Context, ref podcontract.Pod) (err error) {
	spec, ok, err := ParsePod(ref.Meta)
	if err != nil || !ok {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.members[ref.SandboxID]; ok {
		return nil
	}
	if ref.SandboxID == "" || ref.NetNSPath == "" {
		return fmt.Errorf("attach pod %s/%s: sandbox ID and network namespace are required", ref.Meta.Namespace, ref.Meta.Name)
	}
	fail := func(step string, err error) error {
		return fmt.Errorf("attach pod %s/%s (group %s): %s: %w", spec.Namespace, ref.Meta.Name, spec.GroupKey(), step, err)
	}
	ispec := netintercept.Spec{ListenerPort: uint16(m.cfg.ListenerPort), ProbeSources: m.cfg.ProbeSources}
	for _, p := range spec.Ports {
		ispec.ServicePorts = append(ispec.ServicePorts, uint16(p.Number))
	}
	ispec.ExcludePorts = []uint16{uint16(spec.RaftPort)}
	if err := ispec.Validate(); err != nil {
		return fail("interception spec", err)
	}
	if err := m.takeOverLocked(ctx, ref.SandboxID, spec); err != nil {
		return fail("take over", err)
	}
	mb := &member{sandbox: ref.SandboxID, netns: ref.NetNSPath, spec: spec,
		ref:       podevents.Pod{Namespace: ref.Meta.Namespace, Name: ref.Meta.Name, UID: ref.UID},
		readyKick: make(chan struct{}, 1)}
	if m.cfg.MemberDir != nil {
		if mb.prog, err = OpenProgress(m.cfg.MemberDir(spec), ref.SandboxID); err != nil {
			return fail("progress record", err)
		}
	}
	closeProg := func() {
		if mb.prog != nil {
			_ = mb.prog.Close()
		}
	}
	startPod := func(ctx context.Context, ln net.Listener) (*Pod, error) {
		return StartPod(ctx, PodConfig{
			Spec: spec, Listener: ln, OriginalPort: m.cfg.OriginalPort, Dialer: m.cfg.Dialer(ref.NetNSPath),
			StartGroup: func(sm raftcore.StateMachine) (Orderer, func() error, error) {
				if mb.prog != nil {
					r := newResumingSM(sm, mb.prog, spec.GroupKey(), m.cfg.Log)
					r.donor, mb.donor = mb.donor, nil
					sm = r
				}
				return m.cfg.StartGroup(ctx, ref, spec, sm)
			},
			Trace: m.cfg.Trace, Log: m.cfg.Log, Metrics: m.cfg.Metrics, Executor: m.cfg.Executor,
			Budget: m.cfg.ClientBudget, Readiness: func() Readiness { return m.readiness(mb) },
		})
	}
	mb.start = func() (*Pod, error) {
		view := mb.ln.view()
		pod, err := startPod(context.Background(), view)
		if err != nil {
			_ = view.Close() // the listener refuses with the member's reason
		}
		return pod, err
	}
	// Listen before redirecting, so no redirected client is refused.
	ln, err := m.cfg.Listen(ref.NetNSPath, ":"+strconv.Itoa(m.cfg.ListenerPort))
	if err != nil {
		closeProg()
		return fail("listen", err)
	}
	mb.ln = newHandoffListener(ln, func(c net.Conn) { m.refuseBetweenRuns(mb, c) })
	if _, err := m.cfg.Intercept.Apply(ctx, ref.NetNSPath, ispec); err != nil {
		_ = mb.ln.Close()
		closeProg()
		return fail("intercept", err)
	}
	startCause, uncertain := mb.uncertainCause()
	if uncertain {
		m.markRepairing(mb, startCause)
	}
	pod, err := startPod(ctx, mb.ln.view())
	if err != nil {
		_ = mb.ln.Close()
		closeProg()
		_, cerr := m.cfg.Intercept.Cleanup(context.WithoutCancel(ctx), ref.NetNSPath)
		return errors.Join(fail("start", err), cerr)
	}
	checks, stopChecks := context.WithCancel(context.WithoutCancel(ctx))
	for _, p := range spec.Ports {
		if p.Protocol == framing.ProtoRESP {
			go warnIfEvicting(checks, m.cfg.Log, m.cfg.Dialer(ref.NetNSPath), spec.GroupKey(), p.Number)
		}
	}
	mb.stopChecks = stopChecks
	mb.pod = pod
	m.watch(mb)
	go m.publishReadiness(checks, mb)
	if uncertain {
		m.repairStarted(mb, startCause)
		go m.repairFinished(mb, pod, startCause)
	}
	m.members[ref.SandboxID] = mb
	var idx, sub uint64
	if mb.prog != nil {
		idx, sub = mb.prog.Resume()
	}
	m.cfg.Log.Info("pod attached to replication", "sandbox", ref.SandboxID, "pod", spec.Namespace+"/"+ref.Meta.Name,
		"group", spec.GroupKey(), "member", spec.MemberID, "ports", fmt.Sprint(spec.Ports),
		"resume_index", idx, "resume_sub", sub)
	return nil
}

// refuseBetweenRuns answers a client that connects while no run of mb
// accepts (a rebuild between stopping one pod and starting the next, or a
// rebuild that could not start it again) with mb's reason as a protocol
// error of the port it asked for.
func (m *Manager) refuseBetweenRuns(mb *member, conn net.Conn) {
	why := errRestarting
	if r := m.readiness(mb); !r.Serving {
		why = r.errNotServing()
	}
	port := mb.spec.Ports[0]
	if n, err := m.cfg.OriginalPort(conn); err == nil {
		for _, p := range mb.spec.Ports {
			if p.Number == n {
				port = p
			}
		}
	}
	refuseWith(conn, port.Protocol, mb.spec.FramingOptions(), why)
}

// errRestarting: a client arrived while the member's replication restarts
// for another reason than a repair (it is stopping, or starting again).
var errRestarting = fmt.Errorf("%w: replica restarting or stopping; try another replica", ErrNotReady)

// takeOverLocked makes sure no other sandbox runs this member here. A member
// of a sandbox that no longer runs (replaced while its stop did not pass
// through smr-cri, e.g. while the daemon was down) is stopped; one whose
// sandbox still runs is a second pod with the same member ID: refused.
func (m *Manager) takeOverLocked(ctx context.Context, sandboxID string, spec Spec) error {
	for id, old := range m.members {
		if id == sandboxID || old.spec.GroupKey() != spec.GroupKey() || old.spec.MemberID != spec.MemberID {
			continue
		}
		if m.cfg.SandboxRunning != nil {
			if running, err := m.cfg.SandboxRunning(ctx, id); err == nil && running {
				return fmt.Errorf("member %d of group %s already runs here in sandbox %s: two pods with one member ID",
					spec.MemberID, spec.GroupKey(), id)
			}
		}
		m.cfg.Log.Info("stopping the member of a replaced sandbox", "group", spec.GroupKey(), "member", spec.MemberID,
			"old_sandbox", id, "sandbox", sandboxID)
		delete(m.members, id)
		if err := old.stop(); err != nil {
			m.cfg.Log.Warn("stop the member of a replaced sandbox", "old_sandbox", id, "err", err)
		}
	}
	return nil
}

// ContainerCreating implements cri.ContainerWatcher. A container created
// again (attempt > 0) in an attached sandbox restarts empty: the member is
// repaired (see repair).
func (m *Manager) ContainerCreating(_ context.Context, sandboxID, container string, attempt uint32) {
	if attempt == 0 || m.exitRepairCovers(sandboxID, container, attempt) {
		return
	}
	cause := Cause{Kind: CauseContainerRestart, Detail: fmt.Sprintf("container %s attempt %d", container, attempt)}
	// Never hold kubelet's CreateContainer behind an attach or a rebuild in
	// progress: they may wait for this very container's app to come up (a
	// snapshot restore at start), which would deadlock until they time out.
	// Then the repair runs as soon as they are done (a rebuild empties the
	// app and replays the log, so what reached the new app meanwhile is
	// redone).
	if !m.mu.TryLock() {
		go m.repairSandbox(sandboxID, cause)
		return
	}
	mb := m.members[sandboxID]
	m.mu.Unlock()
	if mb == nil {
		return
	}
	if !mb.life.TryLock() {
		go m.repair(mb, cause)
		return
	}
	mb.life.Unlock()
	m.repair(mb, cause)
}

// repairSandbox repairs the member of a sandbox once no attach holds the
// registry.
func (m *Manager) repairSandbox(sandboxID string, cause Cause) {
	m.mu.Lock()
	mb := m.members[sandboxID]
	m.mu.Unlock()
	if mb != nil {
		m.repair(mb, cause)
	}
}

// repair is the one repair path of a running member whose app state became
// uncertain: it is fenced at once (no entry and no local read reaches the
// app), the progress record says so (a crash of smr-cri still repairs),
// and the member is rebuilt in the background: its replication restarts,
// the app is brought to a known state (emptied) and the log replayed into
// it. Too many repairs in a short time stop with a clear error.
func (m *Manager) repair(mb *member, cause Cause) {
	mb.life.Lock()
	defer mb.life.Unlock()
	if mb.stopped || mb.gaveUp {
		return
	}
	x := mb.pod.Executor()
	if mb.pending {
		return // the scheduled rebuild covers this cause too
	}
	x.Fence()
	if mb.prog != nil {
		if err := mb.prog.MarkRebuild(cause); err != nil {
			m.cfg.Log.Error("record the repair of an uncertain app", "sandbox", mb.sandbox, "err", err)
		}
	}
	if n := mb.repairs.add(time.Now(), cause.Kind); n > maxRepairs {
		err := fmt.Errorf("%w: %d repairs for %s within %s, the last: %s: this replica stays broken until its pod is restarted",
			ErrRepairLoop, n, cause.Kind, repairWindow, cause.Detail)
		x.breakWith(err, cause.Kind)
		mb.gaveUp = true
		m.cfg.Log.Error("repair loop stopped", "sandbox", mb.sandbox, "group", mb.spec.GroupKey(), "err", err)
		m.repairGaveUp(mb, cause, err)
		return
	}
	m.cfg.Log.Warn("replica's app state is uncertain: rebuilding this replica", "sandbox", mb.sandbox,
		"group", mb.spec.GroupKey(), "member", mb.spec.MemberID, "cause", cause.Kind, "detail", cause.Detail)
	mb.pending, mb.cause = true, cause
	m.markRepairing(mb, cause)
	m.repairStarted(mb, cause)
	go m.rebuild(mb)
}

// rebuild restarts a fenced member's replication: the new executor finds
// the record uncertain and repairs the app before the log reaches it.
func (m *Manager) rebuild(mb *member) {
	mb.life.Lock()
	defer mb.life.Unlock()
	mb.pending = false
	if mb.stopped || mb.gaveUp {
		return
	}
	if len(mb.cause.Donors) > 0 && mb.prog != nil {
		mb.donor = m.fetchDonor(mb)
	}
	if err := mb.pod.Stop(); err != nil {
		m.cfg.Log.Warn("stop the replication of a rebuilt member", "sandbox", mb.sandbox, "err", err)
	}
	pod, err := mb.start()
	if err != nil {
		// The old pod is stopped: clients are refused (the redirect stays),
		// never served by an app in an unknown state. Reconcile cannot
		// restart it (the sandbox is still attached): say so loudly.
		m.cfg.Log.Error("rebuild of a replica failed; it stays down until its pod is restarted",
			"sandbox", mb.sandbox, "group", mb.spec.GroupKey(), "err", err)
		m.repairFailed(mb, err)
		m.repairGaveUp(mb, mb.cause, err)
		return
	}
	mb.pod = pod
	m.watch(mb)
	go m.repairFinished(mb, pod, mb.cause)
}

// watch sends the running executor's uncertainties to the repair path;
// one that arrives after a rebuild replaced that executor is about the old
// app connections, not the rebuilt replica, and is dropped.
func (m *Manager) watch(mb *member) {
	mb.cur.Store(mb.pod)
	x := mb.pod.Executor()
	x.OnUncertain(func(c Cause) {
		mb.life.Lock()
		current := !mb.stopped && mb.pod.Executor() == x
		mb.life.Unlock()
		if current {
			m.repair(mb, c)
		}
	})
}

// Detach stops replicating a sandbox: the listener closes first (clients
// are refused rather than reaching one app directly), the sessions close
// through the log, the group stops, then the redirect is removed. Unknown
// sandboxes are ignored, so it may be called for every stopped sandbox.
func (m *Manager) Detach(ctx context.Context, sandboxID string) error {
	m.mu.Lock()
	a, ok := m.members[sandboxID]
	delete(m.members, sandboxID)
	m.mu.Unlock()
	if !ok {
		return nil
	}
	errs := []error{a.stop()}
	if _, err := m.cfg.Intercept.Cleanup(ctx, a.netns); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach sandbox %s (group %s): %w", sandboxID, a.spec.GroupKey(), err)
	}
	return nil
}

// ReplicaState is the state of the member of a sandbox (serving,
// rebuilding, broken), or "" when it is not attached.
func (m *Manager) ReplicaState(sandboxID string) string {
	m.mu.Lock()
	mb := m.members[sandboxID]
	m.mu.Unlock()
	if mb == nil {
		return ""
	}
	mb.life.Lock()
	defer mb.life.Unlock()
	return mb.pod.Executor().ReplicaState()
}

// Attached lists the attached sandbox IDs, sorted.
func (m *Manager) Attached() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id := range m.members {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Close detaches every pod.
func (m *Manager) Close(ctx context.Context) error {
	var errs []error
	for _, id := range m.Attached() {
		errs = append(errs, m.Detach(ctx, id))
	}
	return errors.Join(errs...)
}
