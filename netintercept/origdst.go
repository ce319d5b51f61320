package netintercept

import (
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h; x/sys does
// not name it.
const ip6tSoOriginalDst = 80

// OriginalDst returns the destination a redirected connection was addressed to before the
// REDIRECT rule rewrote it (SO_ORIGINAL_DST, read from conntrack). On a connection that was not
// NATed it returns the connection's own local address, or an error if conntrack has no entry.
func OriginalDst(conn *net.TCPConn) (netip.AddrPort, error) {
	if conn == nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: nil connection")
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	local, _ := conn.LocalAddr().(*net.TCPAddr)
	var out netip.AddrPort
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		if local != nil && local.IP.To4() != nil {
			// struct sockaddr_in fits in the first 16 bytes of the IPv6Mreq buffer.
			var m *unix.IPv6Mreq
			m, sockErr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
			if sockErr == nil {
				b := m.Multiaddr
				out = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), uint16(b[2])<<8|uint16(b[3]))
			}
			return
		}
		// struct sockaddr_in6 fits in IPv6MTUInfo's first field.
		var info *unix.IPv6MTUInfo
		info, sockErr = unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, ip6tSoOriginalDst)
		if sockErr == nil {
			p := (*[2]byte)(unsafe.Pointer(&info.Addr.Port)) // network byte order
			out = netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr), uint16(p[0])<<8|uint16(p[1]))
		}
	})
	if err == nil {
		err = sockErr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s -> %s: getsockopt SO_ORIGINAL_DST: %w",
			conn.RemoteAddr(), conn.LocalAddr(), err)
	}
	return out, nil
}
