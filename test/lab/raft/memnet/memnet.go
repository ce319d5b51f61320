// Package memnet is an in-memory raftcore.Transport for tests: every node
// gets an Endpoint on a shared Network, and the test controls partitions,
// message loss and delay per directed link (in the style of raft's rafttest
// network). Messages are deep-copied, so nodes never share raft structures.
package memnet

import (
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

type linkKey struct{ from, to string }

type linkConf struct {
	cut    bool
	drop   float64
	delay  time.Duration
	jitter time.Duration
}

// Network connects Endpoints by address.
type Network struct {
	mu        sync.Mutex
	endpoints map[string]*Endpoint
	links     map[linkKey]*link
	conf      map[linkKey]linkConf
	all       linkConf // applies to links without their own entry
	rnd       *rand.Rand
	closed    bool
}

// New returns an empty network with perfect links.
func New() *Network {
	return &Network{
		endpoints: map[string]*Endpoint{},
		links:     map[linkKey]*link{},
		conf:      map[linkKey]linkConf{},
		rnd:       rand.New(rand.NewPCG(1, 2)),
	}
}

// Endpoint returns the transport for the node at addr. A closed endpoint's
// address can be reused by a restarted node (call Endpoint again).
func (n *Network) Endpoint(addr string) *Endpoint {
	return &Endpoint{net: n, addr: addr}
}

// Partition splits the listed addresses into sides that cannot reach each
// other (both directions). Addresses not listed keep their links.
func (n *Network) Partition(sides ...[]string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, a := range sides {
		for j, b := range sides {
			if i == j {
				continue
			}
			for _, x := range a {
				for _, y := range b {
					c := n.confLocked(x, y)
					c.cut = true
					n.conf[linkKey{x, y}] = c
				}
			}
		}
	}
}

// Isolate cuts addr off from every other address.
func (n *Network) Isolate(addr string, others ...string) {
	n.Partition([]string{addr}, others)
}

// Heal removes every partition, drop and delay setting.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.conf = map[linkKey]linkConf{}
	n.all = linkConf{}
}

// SetDropAll makes every link drop each message with probability rate.
func (n *Network) SetDropAll(rate float64) {
	n.mu.Lock()
	n.all.drop = rate
	n.mu.Unlock()
}

// SetDelayAll delays every message by d plus a random jitter in [0, jitter).
func (n *Network) SetDelayAll(d, jitter time.Duration) {
	n.mu.Lock()
	n.all.delay, n.all.jitter = d, jitter
	n.mu.Unlock()
}

// SetLink sets drop rate and delay for the directed link from -> to.
func (n *Network) SetLink(from, to string, drop float64, delay time.Duration) {
	n.mu.Lock()
	c := n.confLocked(from, to)
	c.drop, c.delay = drop, delay
	n.conf[linkKey{from, to}] = c
	n.mu.Unlock()
}

func (n *Network) confLocked(from, to string) linkConf {
	if c, ok := n.conf[linkKey{from, to}]; ok {
		return c
	}
	return n.all
}

// Close stops every link goroutine.
func (n *Network) Close() {
	n.mu.Lock()
	n.closed = true
	ls := n.links
	n.links = map[linkKey]*link{}
	n.mu.Unlock()
	for _, l := range ls {
		close(l.q)
	}
}

type batch struct {
	group string
	to    uint64
	msgs  []*raftpb.Message
	at    time.Time
}

// link is one directed connection with a bounded FIFO queue, so delay keeps
// per-link order like a TCP stream.
type link struct {
	key linkKey
	q   chan batch
}

const queueLen = 1024

func (n *Network) link(from, to string) *link {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	k := linkKey{from, to}
	l, ok := n.links[k]
	if !ok {
		l = &link{key: k, q: make(chan batch, queueLen)}
		n.links[k] = l
		go n.pump(l)
	}
	return l
}

func (n *Network) pump(l *link) {
	for b := range l.q {
		if d := time.Until(b.at); d > 0 {
			time.Sleep(d)
		}
		n.mu.Lock()
		c := n.confLocked(l.key.from, l.key.to)
		dst := n.endpoints[l.key.to]
		src := n.endpoints[l.key.from]
		keep := b.msgs[:0]
		for _, m := range b.msgs {
			if !c.cut && (c.drop == 0 || n.rnd.Float64() >= c.drop) {
				keep = append(keep, m)
			} else if m.GetType() == raftpb.MsgSnap && src != nil {
				go src.h.ReportSnapshot(b.group, b.to, false)
			}
		}
		n.mu.Unlock()
		if dst == nil || len(keep) == 0 {
			if dst == nil && src != nil {
				src.h.ReportUnreachable(b.group, b.to)
			}
			continue
		}
		dst.h.Deliver(b.group, keep)
		for _, m := range keep {
			if m.GetType() == raftpb.MsgSnap && src != nil {
				src.h.ReportSnapshot(b.group, b.to, true)
			}
		}
	}
}

// Endpoint is one node's raftcore.Transport on the Network.
type Endpoint struct {
	net  *Network
	addr string
	h    raftcore.Handler
}

// Addr is the endpoint's address.
func (e *Endpoint) Addr() string { return e.addr }

// Start implements raftcore.Transport.
func (e *Endpoint) Start(h raftcore.Handler) error {
	e.h = h
	e.net.mu.Lock()
	e.net.endpoints[e.addr] = e
	e.net.mu.Unlock()
	return nil
}

// Send implements raftcore.Transport; it never blocks.
func (e *Endpoint) Send(group string, to uint64, addr string, msgs []*raftpb.Message) {
	e.net.mu.Lock()
	live := e.net.endpoints[e.addr] == e
	c := e.net.confLocked(e.addr, addr)
	var at time.Time
	if c.delay > 0 || c.jitter > 0 {
		at = time.Now().Add(c.delay)
		if c.jitter > 0 {
			at = at.Add(time.Duration(e.net.rnd.Int64N(int64(c.jitter))))
		}
	}
	e.net.mu.Unlock()
	if !live {
		return
	}
	l := e.net.link(e.addr, addr)
	if l == nil {
		return
	}
	cp := make([]*raftpb.Message, len(msgs))
	for i, m := range msgs {
		cp[i] = proto.Clone(m).(*raftpb.Message)
	}
	select {
	case l.q <- batch{group: group, to: to, msgs: cp, at: at}:
	default:
		e.h.ReportUnreachable(group, to)
		for _, m := range msgs {
			if m.GetType() == raftpb.MsgSnap {
				e.h.ReportSnapshot(group, to, false)
			}
		}
	}
}

// Close implements raftcore.Transport: the endpoint stops sending and
// receiving (like a crashed process).
func (e *Endpoint) Close() error {
	e.net.mu.Lock()
	if e.net.endpoints[e.addr] == e {
		delete(e.net.endpoints, e.addr)
	}
	e.net.mu.Unlock()
	return nil
}

// snapChunk is what one in-memory snapshot transfer moves at a time, like
// the gRPC transport's chunks.
const snapChunk = 64 << 10

// SendSnapshot implements raftcore.SnapshotSender: the state file streams
// to the destination's SnapshotReceiver in chunks, on its own goroutine.
// A cut link (at the start or during the transfer) fails it.
func (e *Endpoint) SendSnapshot(group string, to uint64, addr string, m *raftpb.Message, body raftcore.SnapshotBody) {
	m = proto.Clone(m).(*raftpb.Message)
	go func() {
		sent, err := e.streamSnapshot(group, addr, m, body)
		if body.Done != nil {
			body.Done(sent, err)
		}
		e.h.ReportSnapshot(group, to, err == nil)
	}()
}

var errCut = errors.New("memnet: link cut")

func (e *Endpoint) streamSnapshot(group, addr string, m *raftpb.Message, body raftcore.SnapshotBody) (int64, error) {
	cut := func() bool {
		e.net.mu.Lock()
		defer e.net.mu.Unlock()
		return e.net.closed || e.net.endpoints[e.addr] != e || e.net.confLocked(e.addr, addr).cut
	}
	e.net.mu.Lock()
	dst := e.net.endpoints[addr]
	e.net.mu.Unlock()
	if dst == nil || cut() {
		return 0, errCut
	}
	recv, ok := dst.h.(raftcore.SnapshotReceiver)
	if !ok {
		return 0, errors.New("memnet: destination cannot receive snapshot streams")
	}
	f, err := body.Open()
	if err != nil {
		return 0, err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	var sent atomic.Int64
	go func() {
		buf := make([]byte, snapChunk)
		for {
			if cut() {
				pw.CloseWithError(errCut)
				return
			}
			n, err := f.Read(buf)
			if n > 0 {
				if _, werr := pw.Write(buf[:n]); werr != nil {
					return
				}
				sent.Add(int64(n))
			}
			if err == io.EOF {
				pw.Close()
				return
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
	}()
	err = recv.ReceiveSnapshot(group, m, pr)
	pr.CloseWithError(errors.New("memnet: receiver returned"))
	return sent.Load(), err
}

var _ raftcore.SnapshotSender = (*Endpoint)(nil)
