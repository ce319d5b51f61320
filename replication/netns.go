package replication

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/smr-io/smr-cri/netintercept"
)

// NetnsDialer reaches the app at 127.0.0.1:port inside a pod's network
// namespace (the executor's connections are locally generated there, so the
// interception rules, which only see inbound traffic, leave them alone).
type NetnsDialer struct {
	Path string // e.g. /var/run/netns/cni-...
}

// DialApp implements AppDialer.
func (d NetnsDialer) DialApp(ctx context.Context, port int) (net.Conn, error) {
	return netintercept.DialInNetns(ctx, d.Path, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
}

// NetnsPath implements appstate.NetnsPather: the audit's copy-on-write
// capture finds the app's process by this namespace.
func (d NetnsDialer) NetnsPath() string { return d.Path }

// OriginalPort returns the port a redirected client connection was sent to
// (SO_ORIGINAL_DST); use it as PodConfig.OriginalPort.
func OriginalPort(conn net.Conn) (int, error) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return 0, fmt.Errorf("original port: %T is not a TCP connection", conn)
	}
	ap, err := netintercept.OriginalDst(tc)
	if err != nil {
		return 0, err
	}
	return int(ap.Port()), nil
}
