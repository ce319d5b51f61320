// Package daemon wires the parts of smr-cri into the node daemon (`smr-cri
// serve`): it is the cri.Replicator handed to the CRI proxy, built on a
// replication.Manager whose GroupStarter runs one raftcore node per
// replicated pod.
//
// # One ordering node per pod member
//
// A member's raft endpoint is the pod's own address: the gRPC transport
// serves a listener opened inside the pod's network namespace at
// podIP:smr.io/raft-port (netintercept.ListenInNetns), so peers reach a
// replica at its pod IP wherever it runs, and several members of one group
// may live on one node (or in one process, as in the integration test). Each
// member therefore has its own raftcore.Node (one transport per listen
// address) with its data under <data-dir>/<namespace>.<group>/member-<id>/:
// raftcore's WAL and snapshots in <namespace>.<group>/, and the progress
// record (replication/progress.go) beside them.
//
// Peers are dialed from inside the member's pod network namespace
// (netintercept.DialInNetns): the connection leaves from the pod's own
// address, so a NetworkPolicy that admits only the group's pods to the raft
// port (examples/redis/networkpolicy.yaml) lets it through. The raft port is
// excluded from interception, and outbound traffic is never redirected.
//
// # Membership
//
// Static (smr.io/peers) needs nothing else. smr.io/membership=kubernetes
// needs --kubeconfig: the initial membership is listed from the API server
// (Discovery.Peers) and a pod watch moves addresses with Group.SetPeerAddr.
// The kubeconfig is read at start when the file is there (a broken one stops
// serve), otherwise at the first attach that needs it, and again at each
// such attach until it loads: the installed unit names the file the
// DaemonSet's trace container writes, which may come after serve started.
// Until then those pods fail to attach with an error naming the file (and
// Reconcile retries them).
//
// # Kubelet probes
//
// kubelet probes a pod (tcpSocket, httpGet, grpc) by connecting to podIP:port
// from the node, so the connection's source is the node's address on the pod
// network: on a bridge CNI the bridge's address, which is also the pod's
// default gateway (198.19.N.1 on the local cluster); on ptp CNIs (kindnet)
// the host-side veth's address, again the pod's gateway. Connections from a
// netintercept.Spec.ProbeSources address skip the redirect and reach the
// app directly. serve's --probe-source (Config.ProbeSources) chooses them:
//   - explicit IPv4 addresses, for all pods;
//   - "auto": per pod at attach (detectProbeSources), the gateways of the
//     pod netns's IPv4 default routes, plus the source address the daemon's
//     own netns (the node's) picks for its route to each pod IP, i.e. the
//     `src` of `ip route get <podIP>`; never one of the pod's own IPs;
//   - "none" (the default): no bypass; probes to a service port go through
//     the ordered stream like any client (a tcpSocket probe opens and closes
//     a session in the log; an exec probe to 127.0.0.1 is never redirected).
//
// "auto" is not the default because a source address cannot tell kubelet
// from other node-originated traffic: connections from processes or
// hostNetwork pods on the node, and Service traffic the node masquerades
// (kube-proxy SNATs traffic from outside the cluster CIDR, e.g. NodePort
// with externalTrafficPolicy=Cluster or a ClusterIP dialed from the node, to
// the bridge address when the endpoint is local) carry the same address and
// would silently reach one replica's app unreplicated, making the replicas
// diverge. Turn it on (or list the address) only where clients never come
// from the node's own address, and prefer exec probes otherwise.
//
// # Mutual TLS between members
//
// Raft traffic is mutual TLS when Config.CA is set, as serve does by default
// (docs/security.md). The cluster CA is loaded (or created) at the first
// member that starts, not at New: on Kubernetes the CA Secret's RBAC may be
// applied after the daemon starts, and a failure is that attach's error,
// retried at the next reconcile. With an API server (Kube or Kubeconfig) and
// no SecretStore of its own, the CA is kept in the Secret
// smr-system/smr-cri-ca through the daemon's API client (loaded lazily like
// discovery's), cached in CA.Dir; without one, CA.Dir alone holds it. Each
// member gets its own certificate (internal/pki Issuer, rotated before
// expiry) proving spiffe://smr.io/group/<group>/member/<id>, and its
// transport refuses a peer whose certificate does not prove the sender of
// each raft message, or whose sender is no longer a member. A nil CA (serve
// --insecure-raft) is plaintext, with a loud warning at New.
//
// # Restart of the daemon
//
// The CRI proxy keeps no state. At start, and every ReconcileInterval (so
// also when the runtime comes back), Reconcile lists the READY sandboxes
// labelled smr.io/replicate=true and attaches the ones not attached, and
// detaches attached ones that are gone. The apps in those pods kept running,
// so the executor must not replay the log into them: the progress record
// (written after every applied entry, keyed by sandbox ID) says how far the
// running app got, and the replay skips the client requests up to there.
// Stopping the daemon (SIGTERM) keeps each pod's iptables redirect: clients
// are refused until the daemon is back, never served by one unreplicated app.
//
// Limits of the restart (see also replication/progress.go):
//   - An entry in flight to the app at a SIGKILL is recorded as such before
//     its bytes reach the app; the restart empties the app and replays the
//     log instead of guessing (replication's repair path).
//   - App connections die with the daemon. Sessions still open at the resume
//     point are re-opened as fresh app connections, so their connection state
//     (SELECT, MULTI in progress) is lost; sessions of this replica's own
//     clients end with its RESET, as before.
//   - The record is keyed by sandbox: an app container that restarted inside
//     the same sandbox while the daemon was down comes back empty but is
//     treated as the running app (a restart while the daemon runs is seen at
//     CreateContainer and repaired). Restart the pod (new sandbox) then.
//   - Kubernetes membership fixes the group's members at its first start
//     (IDs 1..highest pod index seen); growing a group later needs
//     raftcore's AddMember, which nothing calls yet. A member whose data
//     directory is lost (pod moved to another node without its disk) starts
//     empty with its old ID, which raft does not allow in general.
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/cri"
	"github.com/smr-io/smr-cri/internal/kubecore"
	"github.com/smr-io/smr-cri/internal/pki"
	"github.com/smr-io/smr-cri/internal/pki/kubesecret"
	"github.com/smr-io/smr-cri/internal/podevents"
	"github.com/smr-io/smr-cri/netintercept"
	"github.com/smr-io/smr-cri/raftcore"
	"github.com/smr-io/smr-cri/raftcore/transport"
	"github.com/smr-io/smr-cri/replication"
	"github.com/smr-io/smr-cri/replication/podcontract"
)

// Defaults.
const (
	DefaultDataDir           = "/var/lib/smr-cri"
	DefaultReconcileInterval = 10 * time.Second
)

// Config configures the daemon's replication side.
type Config struct {
	// DataDir holds every member's raft log and progress record.
	DataDir string
	// RuntimeEndpoint is the CRI endpoint of containerd, to list the
	// sandboxes to re-attach (unix:///path).
	RuntimeEndpoint string
	// Kube enables smr.io/membership=kubernetes; nil: static peers only,
	// unless Kubeconfig is set.
	Kube *kubecore.Client
	// Kubeconfig, used when Kube is nil, is read at New if the file exists
	// (a broken file is an error there) and otherwise at the first attach
	// that needs the API server, again at each such attach until it loads:
	// on a node the DaemonSet's trace container writes it
	// (--export-credentials) after the init container started serve.
	Kubeconfig string
	// NodeName is logged with attach events.
	NodeName string
	Trace    *replication.Tracer
	Metrics  *replication.Metrics
	// RaftMetrics are raftcore's (smr_raft_*: WAL, batches, snapshots, log
	// bytes); nil records nothing.
	RaftMetrics *raftcore.Metrics
	Log         *slog.Logger
	// ReconcileInterval is the period of Run's re-attach pass (default 10s).
	ReconcileInterval time.Duration
	// TickInterval is raft's tick (default raftcore's, 100ms).
	TickInterval time.Duration
	// CA is the cluster CA members issue their certificates from (mutual
	// TLS between ordering nodes); nil: plaintext, unauthenticated raft.
	CA *pki.LazyCA
	// CertValidity is the lifetime of member certificates (0: pki's default).
	CertValidity time.Duration
	// Events records Kubernetes Events on replica pods (status.go); nil: a
	// podevents.Broadcaster over the API client when there is one.
	Events podevents.Recorder

	// Executor tunes every pod's executor (app timeout, queue bound); the
	// zero value takes replication's defaults.
	Executor replication.ExecutorConfig
	// ClientBudgetBytes bounds the memory of every replicated pod's client
	// connections together (replication.ClientBudget); 0: the default.
	ClientBudgetBytes int64
	// ExitPollInterval is how often Run polls the containers of the
	// replicated pods for exits (exitpoll.go); 0: DefaultExitPollInterval,
	// negative: off.
	ExitPollInterval time.Duration
	// Readiness publishes each replica's smr.io/replica-serving pod
	// condition; nil: the API server's pods/status (readiness.go).
	Readiness replication.ReadinessPublisher

	// Kernel-facing pieces; nil means the real ones (pod network
	// namespaces). Unit tests run them on loopback.
	Intercept replication.Interceptor
	// ListenApp opens the in-pod client listener, ListenRaft the member's
	// raft listener at podIP:raft-port, both inside netnsPath.
	ListenApp  func(netnsPath, addr string) (net.Listener, error)
	ListenRaft func(netnsPath, addr string) (net.Listener, error)
	// DialRaft opens a member's connection to a peer from inside the pod's
	// network namespace, so the peer (and any NetworkPolicy) sees the pod's
	// own address as the source. Default: netintercept.DialInNetns when
	// ListenRaft is the default too; nil dials from the daemon's netns.
	DialRaft     func(ctx context.Context, netnsPath, addr string) (net.Conn, error)
	Dialer       func(netnsPath string) replication.AppDialer
	OriginalPort func(net.Conn) (int, error)
	ListenerPort int
	// ProbeSources are the source addresses whose connections bypass each
	// pod's redirect (kubelet probes); see "Kubelet probes" above.
	ProbeSources ProbeSources
	// detect finds a pod's probe sources when ProbeSources.Auto; nil means
	// detectProbeSources (tests replace it).
	detect func(netnsPath string) ([]netip.Addr, error)
}

// Daemon is the cri.Replicator of `smr-cri serve`.
type Daemon struct {
	cfg       Config
	log       *slog.Logger
	mgr       *replication.Manager
	intercept *keepingInterceptor
	disc      *Discovery
	conn      *grpc.ClientConn
	runtime   runtimeapi.RuntimeServiceClient

	discMu sync.Mutex // guards disc (loaded lazily from cfg.Kubeconfig)

	status      memberRegistry // the operator's view (status.go)
	events      podevents.Recorder
	closeEvents func(context.Context)
}

var _ cri.Replicator = (*Daemon)(nil)

// keepingInterceptor removes a pod's redirect on detach, except while the
// daemon shuts down: then the redirect stays and clients are refused (no
// listener) until the restarted daemon re-attaches the pod.
// It also adds the probe sources to every pod's interception spec.
type keepingInterceptor struct {
	replication.Interceptor
	keep   atomic.Bool
	probes ProbeSources
	detect func(netnsPath string) ([]netip.Addr, error)
	log    *slog.Logger
}

// Apply adds the explicit and (with auto) the detected probe sources of the
// pod to spec. A failed detection is logged and the pod is still attached:
// its probes then pass through the ordered stream, which is safe.
func (k *keepingInterceptor) Apply(ctx context.Context, netnsPath string, spec netintercept.Spec) (netintercept.Result, error) {
	sources := slices.Concat(spec.ProbeSources, k.probes.Addrs)
	if k.probes.Auto {
		found, err := k.detect(netnsPath)
		if err != nil {
			k.log.Warn("cannot detect the kubelet probe source of a pod; its probes go through the ordered stream",
				"netns", netnsPath, "err", err)
		}
		sources = append(sources, found...)
	}
	spec.ProbeSources = nil
	for _, a := range sources {
		if !slices.Contains(spec.ProbeSources, a.Unmap()) {
			spec.ProbeSources = append(spec.ProbeSources, a.Unmap())
		}
	}
	if len(spec.ProbeSources) > 0 {
		k.log.Info("connections from these sources bypass the redirect (kubelet probes)", "netns", netnsPath,
			"probe_sources", fmt.Sprint(spec.ProbeSources))
	}
	return k.Interceptor.Apply(ctx, netnsPath, spec)
}

func (k *keepingInterceptor) Cleanup(ctx context.Context, netnsPath string) (netintercept.Result, error) {
	if k.keep.Load() {
		return netintercept.Result{}, nil
	}
	return k.Interceptor.Cleanup(ctx, netnsPath)
}

// New validates cfg and builds the daemon; it does not touch any pod yet.
func New(cfg Config) (*Daemon, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("daemon: data directory is required")
	}
	if !filepath.IsAbs(cfg.DataDir) {
		return nil, fmt.Errorf("daemon: data directory %q must be an absolute path", cfg.DataDir)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	if cfg.CA == nil {
		cfg.Log.Warn("INSECURE: raft traffic is plaintext and unauthenticated (--insecure-raft); any process that reaches a member's raft port can inject entries into its group's log")
	}
	if cfg.Intercept == nil {
		cfg.Intercept = &netintercept.Interceptor{}
	}
	if cfg.ListenRaft == nil {
		cfg.ListenRaft = func(netns, addr string) (net.Listener, error) {
			return netintercept.ListenInNetns(netns, "tcp", addr)
		}
		if cfg.DialRaft == nil {
			cfg.DialRaft = func(ctx context.Context, netns, addr string) (net.Conn, error) {
				return netintercept.DialInNetns(ctx, netns, "tcp", addr)
			}
		}
	}
	if cfg.detect == nil {
		cfg.detect = detectProbeSources
	}
	d := &Daemon{cfg: cfg, log: cfg.Log,
		intercept: &keepingInterceptor{Interceptor: cfg.Intercept, probes: cfg.ProbeSources, detect: cfg.detect, log: cfg.Log}}
	if cfg.CA != nil && cfg.CA.Store == nil && (cfg.Kube != nil || cfg.Kubeconfig != "") {
		cfg.CA.Store = caSecretStore{d}
	}
	if cfg.Kube != nil {
		d.disc = &Discovery{Client: cfg.Kube, Log: cfg.Log}
	} else if cfg.Kubeconfig != "" {
		if _, err := os.Stat(cfg.Kubeconfig); err == nil {
			if _, err := d.discovery(); err != nil {
				return nil, fmt.Errorf("daemon: %w", err)
			}
		} else {
			cfg.Log.Info("kubeconfig not there yet; it is read at the first attach of a pod with kubernetes membership",
				"kubeconfig", cfg.Kubeconfig, "err", err)
		}
	}
	if cfg.RuntimeEndpoint != "" {
		var err error
		if d.conn, err = cri.DialRuntime(cfg.RuntimeEndpoint); err != nil {
			return nil, fmt.Errorf("daemon: runtime client: %w", err)
		}
		d.runtime = runtimeapi.NewRuntimeServiceClient(d.conn)
	}
	if cfg.ClientBudgetBytes == 0 {
		cfg.ClientBudgetBytes = replication.DefaultClientBudgetBytes
	}
	budget, err := replication.NewClientBudget(cfg.ClientBudgetBytes)
	if err != nil {
		d.closeConn()
		return nil, fmt.Errorf("daemon: %w", err)
	}
	d.events, d.closeEvents = newRecorder(cfg, d)
	if cfg.Readiness == nil {
		cfg.Readiness = newReadinessPublisher(d)
	}
	mgr, err := replication.NewManager(replication.ManagerConfig{
		Intercept: d.intercept, StartGroup: d.startGroup, ListenerPort: cfg.ListenerPort,
		Listen: cfg.ListenApp, Dialer: cfg.Dialer, OriginalPort: cfg.OriginalPort,
		Trace: cfg.Trace, Log: cfg.Log, Metrics: cfg.Metrics,
		MemberDir: d.memberDir, SandboxRunning: d.sandboxRunning, Executor: cfg.Executor,
		ClientBudget: budget,
		Events:       d.Events(),
		Readiness:    cfg.Readiness,
	})
	if err != nil {
		d.closeEvents(context.Background())
		d.closeConn()
		return nil, fmt.Errorf("daemon: %w", err)
	}
	d.mgr = mgr
	return d, nil
}

// AttachPod implements cri.Replicator.
func (d *Daemon) AttachPod(ctx context.Context, pod podcontract.Pod) error {
	err := d.mgr.Attach(ctx, pod)
	if err != nil {
		d.recordAttachError(podevents.Pod{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}, err)
	}
	return err
}

// DetachPod implements cri.Replicator.
func (d *Daemon) DetachPod(ctx context.Context, sandboxID string) error {
	return d.mgr.Detach(ctx, sandboxID)
}

// ReplicaState is the state of a sandbox's member: serving, rebuilding,
// broken, or "" when it is not attached.
func (d *Daemon) ReplicaState(sandboxID string) string { return d.mgr.ReplicaState(sandboxID) }

// Attached lists the attached sandbox IDs.
func (d *Daemon) Attached() []string { return d.mgr.Attached() }

// Close stops every member (their sessions close through the log) but keeps
// the pods' redirects, for a restarted daemon to re-attach.
func (d *Daemon) Close(ctx context.Context) error {
	d.intercept.keep.Store(true)
	err := d.mgr.Close(ctx)
	d.closeEvents(ctx)
	d.closeConn()
	return err
}

func (d *Daemon) closeConn() {
	if d.conn != nil {
		_ = d.conn.Close()
	}
}

// discovery returns the API server client of kubernetes membership, loading
// cfg.Kubeconfig if that was not done yet. Failures are not remembered: the
// next attach tries again.
func (d *Daemon) discovery() (*Discovery, error) {
	d.discMu.Lock()
	defer d.discMu.Unlock()
	if d.disc != nil {
		return d.disc, nil
	}
	need := fmt.Sprintf("%s=%s needs the API server", podcontract.AnnotationMembership, podcontract.MembershipKubernetes)
	if d.cfg.Kubeconfig == "" {
		return nil, errors.New(need + ": start smr-cri serve with --kubeconfig")
	}
	if _, err := os.Stat(d.cfg.Kubeconfig); err != nil {
		return nil, fmt.Errorf("%s: kubeconfig %s is not readable yet (on a node the smr-cri DaemonSet's trace container writes it with --export-credentials; is that pod running?): %w",
			need, d.cfg.Kubeconfig, err)
	}
	cs, err := NewKubeClient(d.cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", need, err)
	}
	d.disc = &Discovery{Client: cs, Log: d.log}
	d.log.Info("API server client loaded", "kubeconfig", d.cfg.Kubeconfig)
	return d.disc, nil
}

// memberDir is where a member keeps its raft data and progress record.
func (d *Daemon) memberDir(spec replication.Spec) string {
	return filepath.Join(d.cfg.DataDir, spec.GroupKey(), "member-"+strconv.FormatUint(spec.MemberID, 10))
}

// startGroup is the Manager's GroupStarter: a raftcore node for this member
// serving at podIP:raft-port inside the pod's netns, with sm (the executor,
// wrapped by replication to resume where the running app is).
func (d *Daemon) startGroup(ctx context.Context, pod podcontract.Pod, spec replication.Spec, sm raftcore.StateMachine) (_ replication.Orderer, _ func() error, err error) {
	if len(pod.IPs) == 0 {
		return nil, nil, errors.New("the pod has no IP: its raft endpoint listens at podIP:" + strconv.Itoa(spec.RaftPort))
	}
	self := net.JoinHostPort(pod.IPs[0], strconv.Itoa(spec.RaftPort))
	var peers map[uint64]string
	var disc *Discovery // kubernetes membership: also watches the pods below
	var plan StartPlan
	switch spec.Membership {
	case podcontract.MembershipKubernetes:
		if disc, err = d.discovery(); err != nil {
			return nil, nil, err
		}
		if plan, err = disc.Plan(ctx, spec, pod.Name, self); err != nil {
			return nil, nil, err
		}
		peers = plan.Peers
	default:
		peers = map[uint64]string{}
		for _, p := range spec.Peers {
			peers[p.ID] = p.Addr
		}
	}
	var cleanup []func() error
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				_ = cleanup[i]()
			}
		}
	}()
	dir := d.memberDir(spec)
	if aside, err := setAsideStaleLog(dir, spec.GroupKey(), plan.UID); err != nil {
		return nil, nil, err
	} else if aside != "" {
		d.log.Warn("this member's data directory belonged to a deleted StatefulSet of the same name: its raft log is set aside and the member starts in the new group",
			"group", spec.GroupKey(), "member", spec.MemberID, "set_aside", aside, "statefulset_uid", plan.UID)
	}
	var grp atomic.Pointer[raftcore.Group]
	tcfg, err := d.raftSecurity(ctx, spec, &grp)
	if err != nil {
		return nil, nil, err
	}
	ln, err := d.cfg.ListenRaft(pod.NetNSPath, self)
	if err != nil {
		return nil, nil, fmt.Errorf("raft listener at %s in the pod netns: %w", self, err)
	}
	tcfg.Listener, tcfg.Logger = ln, d.log.With("group", spec.GroupKey())
	if dial := d.cfg.DialRaft; dial != nil {
		netns := pod.NetNSPath
		tcfg.Dialer = func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, netns, addr) }
	}
	tr, err := transport.New(tcfg)
	if err != nil {
		_ = ln.Close()
		return nil, nil, err
	}
	node, err := raftcore.NewNode(raftcore.NodeConfig{DataDir: dir, Transport: tr, TickInterval: d.cfg.TickInterval,
		Logger: d.log, Metrics: d.cfg.RaftMetrics}) // raftcore adds group and member
	if err != nil {
		_ = tr.Close()
		return nil, nil, err
	}
	cleanup = append(cleanup, node.Close)
	gcfg := raftcore.GroupConfig{Name: spec.GroupKey(), SelfID: spec.MemberID, Peers: peers,
		Join: plan.Join, CatchUpBeforeVoting: plan.CatchUpBeforeVoting}
	if err := d.enableSnapshots(ctx, spec, sm, &gcfg); err != nil {
		return nil, nil, err
	}
	g, err := node.StartGroup(gcfg, sm)
	if err != nil {
		return nil, nil, err
	}
	grp.Store(g)
	untrack := d.trackMember(ctx, pod, spec, dir, g, sm, self)
	bg, cancel := context.WithCancel(context.Background())
	cleanup = append(cleanup, func() error { cancel(); return nil })
	if disc != nil {
		d.followKubernetes(bg, disc, spec, plan, g)
	}
	if d.cfg.Metrics != nil {
		go d.cfg.Metrics.WatchLeader(bg, spec.GroupKey(), func() uint64 { return g.Status().Leader }, time.Second)
	}
	security := "mtls"
	if tcfg.TLS == nil {
		security = "plaintext"
	}
	d.log.Info("raft member started", "group", spec.GroupKey(), "member", spec.MemberID, "listen", self, "raft_security", security,
		"peers", fmt.Sprint(peers), "dir", dir, "node", d.cfg.NodeName, "statefulset", plan.StatefulSet, "size", plan.Size,
		"if_new", plan.Why)
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			untrack()
			stopErr = node.Close()
		})
		return stopErr
	}
	return g, stop, nil
}

// raftSecurity is the transport's mutual TLS for member spec (empty without
// a CA): a certificate for the member issued from the cluster CA, and
// per message, a sender whose certificate proves it is that member of this
// group and who is still a member of grp (nil until the group started).
func (d *Daemon) raftSecurity(ctx context.Context, spec replication.Spec, grp *atomic.Pointer[raftcore.Group]) (transport.Config, error) {
	if d.cfg.CA == nil {
		return transport.Config{}, nil
	}
	ca, err := d.cfg.CA.Get(ctx)
	if err != nil {
		return transport.Config{}, err
	}
	// A removed member's streams are refused within a second.
	isMember := raftcore.MemberCheck(grp, spec.GroupKey(), time.Second)
	m, err := pki.NewMember(ca, []pki.Identity{{Group: spec.GroupKey(), Member: spec.MemberID}}, d.cfg.CertValidity, isMember)
	if err != nil {
		return transport.Config{}, fmt.Errorf("member certificate for mutual TLS: %w", err)
	}
	return transport.Config{TLS: m.TLS, AuthorizePeer: m.Authorize}, nil
}

// caSecretStore keeps the cluster CA in its Secret through the daemon's API
// client, loaded at first use (see discovery).
type caSecretStore struct{ d *Daemon }

func (s caSecretStore) GetSecret(ctx context.Context, namespace, name string) (map[string][]byte, bool, error) {
	disc, err := s.d.discovery()
	if err != nil {
		return nil, false, err
	}
	return kubesecret.Store{Client: disc.Client}.GetSecret(ctx, namespace, name)
}

func (s caSecretStore) CreateSecret(ctx context.Context, namespace, name string, data map[string][]byte) (bool, error) {
	disc, err := s.d.discovery()
	if err != nil {
		return false, err
	}
	return kubesecret.Store{Client: disc.Client}.CreateSecret(ctx, namespace, name, data)
}

// sandboxRunning asks the runtime whether a sandbox is READY (for the
// Manager's take-over of a member whose sandbox was replaced).
func (d *Daemon) sandboxRunning(ctx context.Context, id string) (bool, error) {
	if d.runtime == nil {
		return false, nil
	}
	st, err := d.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
	if err != nil {
		return false, fmt.Errorf("sandbox status: %w", err)
	}
	return st.GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_READY, nil
}

// Run re-attaches the replicated sandboxes now and every ReconcileInterval
// (every second while the runtime is unreachable) until ctx ends.
func (d *Daemon) Run(ctx context.Context) {
	if d.runtime == nil {
		return
	}
	if d.cfg.ExitPollInterval >= 0 {
		p := &exitPoller{rt: d.runtime, sink: d.mgr, attached: d.mgr.Attached, log: d.log}
		go p.run(ctx, cmp.Or(d.cfg.ExitPollInterval, DefaultExitPollInterval))
	}
	for {
		wait := d.cfg.ReconcileInterval
		if err := d.Reconcile(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Warn("re-attach pass failed (runtime down?); retrying", "err", err)
			wait = min(wait, time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Reconcile attaches every READY sandbox labelled smr.io/replicate=true that
// is not attached (a failure is logged per pod and does not stop the
// others), and detaches attached sandboxes that are no longer READY.
func (d *Daemon) Reconcile(ctx context.Context) error {
	if d.runtime == nil {
		return errors.New("daemon: no runtime endpoint")
	}
	resp, err := d.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{podcontract.LabelReplicate: podcontract.ValueReplicate},
	}})
	if err != nil {
		return fmt.Errorf("list replicated sandboxes: %w", err)
	}
	attached := map[string]bool{}
	for _, id := range d.mgr.Attached() {
		attached[id] = true
	}
	listed := map[string]bool{}
	for _, sb := range resp.GetItems() {
		id := sb.GetId()
		listed[id] = true
		if attached[id] {
			continue
		}
		if err := d.reattach(ctx, id); err != nil {
			d.log.Error("re-attach replicated pod", "sandbox", id,
				"pod", sb.GetMetadata().GetNamespace()+"/"+sb.GetMetadata().GetName(), "err", err)
		}
	}
	for id := range attached {
		if listed[id] {
			continue
		}
		// Attached after the list was taken, or really gone? Ask again.
		st, err := d.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
		if status.Code(err) == codes.NotFound || (err == nil && st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY) {
			d.log.Info("detach sandbox that is no longer ready", "sandbox", id)
			if err := d.mgr.Detach(ctx, id); err != nil {
				d.log.Warn("detach", "sandbox", id, "err", err)
			}
		}
	}
	return nil
}

func (d *Daemon) reattach(ctx context.Context, id string) error {
	st, err := d.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return fmt.Errorf("sandbox status: %w", err)
	}
	pod, err := cri.SandboxPodInfo(st)
	if err != nil {
		return err
	}
	if err := d.AttachPod(ctx, pod); err != nil {
		return err
	}
	d.log.Info("re-attached running replicated pod", "sandbox", id, "pod", pod.Namespace+"/"+pod.Name, "ips", pod.IPs)
	return nil
}

var _ cri.ContainerWatcher = (*Daemon)(nil)

// ContainerCreating implements cri.ContainerWatcher: a container created
// again in a replicated sandbox fences and rebuilds its member.
func (d *Daemon) ContainerCreating(ctx context.Context, sandboxID, container string, attempt uint32) {
	d.mgr.ContainerCreating(ctx, sandboxID, container, attempt)
}
