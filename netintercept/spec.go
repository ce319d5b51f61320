package netintercept

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrInvalidSpec is wrapped by every error Validate returns.
var ErrInvalidSpec = errors.New("invalid interception spec")

// Spec describes the interception of one pod.
type Spec struct {
	// ServicePorts are the pod's TCP ports whose inbound traffic goes to smr-cri's listener.
	ServicePorts []uint16
	// ListenerPort is the port smr-cri listens on inside the pod netns.
	ListenerPort uint16
	// ExcludePorts are inbound TCP ports that are never redirected (smr-cri's raft port, ...).
	ExcludePorts []uint16
	// ProbeSources are node addresses (IPv4) whose connections bypass the redirect, so kubelet's
	// liveness and readiness probes reach the container directly.
	ProbeSources []netip.Addr
	// Mark, when not zero, exempts packets carrying these mark bits (mask = Mark).
	Mark uint32
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, args...))
}

// Validate reports the first thing wrong with s, naming the offending field and value.
func (s Spec) Validate() error {
	if len(s.ServicePorts) == 0 {
		return invalid("no service ports")
	}
	if s.ListenerPort == 0 {
		return invalid("listener port 0 is out of range 1-65535")
	}
	seen := map[uint16]string{s.ListenerPort: "the listener port"}
	for _, group := range []struct {
		name  string
		ports []uint16
	}{{"service port", s.ServicePorts}, {"exclude port", s.ExcludePorts}} {
		for _, p := range group.ports {
			if p == 0 {
				return invalid("%s 0 is out of range 1-65535", group.name)
			}
			if prev, dup := seen[p]; dup && prev == "a "+group.name {
				return invalid("%s %d is listed twice", group.name, p)
			} else if dup {
				return invalid("%s %d is also %s", group.name, p, prev)
			}
			seen[p] = "a " + group.name
		}
	}
	probes := map[netip.Addr]bool{}
	for _, a := range s.ProbeSources {
		switch {
		case !a.IsValid():
			return invalid("probe source address is empty")
		case !a.Unmap().Is4():
			return invalid("probe source %s is not IPv4 (only IPv4 rules are built)", a)
		case a.IsUnspecified() || a.IsLoopback() || a.IsMulticast():
			return invalid("probe source %s is not a node address", a)
		case probes[a.Unmap()]:
			return invalid("probe source %s is listed twice", a)
		}
		probes[a.Unmap()] = true
	}
	return nil
}

// CheckPort converts a port number given as int (from config, flags, CRI annotations) into a
// port, with a clear error when it is out of range.
func CheckPort(what string, p int) (uint16, error) {
	if p < 1 || p > 65535 {
		return 0, invalid("%s %d is out of range 1-65535", what, p)
	}
	return uint16(p), nil
}
