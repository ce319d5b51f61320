package netintercept

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrGenerationChanged is returned by TableRemover.DeleteTable when the namespace's nf_tables
// ruleset changed after the generation was read: someone else touched it, so it is left alone.
var ErrGenerationChanged = errors.New("nf_tables ruleset changed concurrently")

// TableRemover deletes an empty nf_tables table, but only if the ruleset is still at the
// generation read before the table was seen empty.
type TableRemover interface {
	Generation(ctx context.Context, netnsPath string) (uint32, error)
	DeleteTable(ctx context.Context, netnsPath string, family uint8, name string, gen uint32) error
}

// NFTables is the TableRemover that talks nfnetlink to the kernel directly, so that no nft
// program is needed.
type NFTables struct{}

const nftRecvTimeout = 5 * time.Second

// Generation implements TableRemover (NFT_MSG_GETGEN).
func (NFTables) Generation(ctx context.Context, netnsPath string) (uint32, error) {
	var gen uint32
	err := nfnlExchange(netnsPath, [][]byte{
		nlmsg(nftMsg(unix.NFT_MSG_GETGEN), unix.NLM_F_REQUEST, 1, unix.AF_UNSPEC, 0, nil),
	}, 1, func(typ uint16, payload []byte) error {
		if typ != nftMsg(unix.NFT_MSG_NEWGEN) {
			return nil
		}
		for a, data := range nlattrs(payload) {
			if a == unix.NFTA_GEN_ID && len(data) >= 4 {
				gen = binary.BigEndian.Uint32(data)
			}
		}
		return errDone
	})
	if err != nil {
		return 0, fmt.Errorf("read nf_tables generation in netns %q: %w", netnsPath, err)
	}
	return gen, nil
}

// DeleteTable implements TableRemover: one batch, tagged with gen, that deletes the table.
func (NFTables) DeleteTable(ctx context.Context, netnsPath string, family uint8, name string, gen uint32) error {
	genAttr := binary.BigEndian.AppendUint32(nil, gen)
	msgs := [][]byte{
		nlmsg(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, 1, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES,
			nlattr(unix.NFNL_BATCH_GENID, genAttr)),
		nlmsg(nftMsg(unix.NFT_MSG_DELTABLE), unix.NLM_F_REQUEST|unix.NLM_F_ACK, 2, family, 0,
			nlattr(unix.NFTA_TABLE_NAME, append([]byte(name), 0))),
		nlmsg(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, 3, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil),
	}
	err := nfnlExchange(netnsPath, msgs, 2, nil)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.ERESTART):
		return fmt.Errorf("delete nf_tables table %s in netns %q: %w", name, netnsPath, ErrGenerationChanged)
	default:
		return fmt.Errorf("delete nf_tables table %s in netns %q: %w", name, netnsPath, err)
	}
}

var errDone = errors.New("done")

func nftMsg(m uint16) uint16 { return unix.NFNL_SUBSYS_NFTABLES<<8 | m }

// nfnlExchange sends msgs on a netfilter netlink socket opened in the namespace and reads
// replies until the ack for ackSeq, an error, or onMsg returning errDone.
func nfnlExchange(netnsPath string, msgs [][]byte, ackSeq uint32, onMsg func(typ uint16, payload []byte) error) error {
	var fd int
	err := inNetns(netnsPath, func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(nftRecvTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("set netlink receive timeout: %w", err)
	}
	var req []byte
	for _, m := range msgs {
		req = append(req, m...)
	}
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send netlink request: %w", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("receive netlink reply: %w", err)
		}
		replies, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("parse netlink reply: %w", err)
		}
		for _, r := range replies {
			if r.Header.Type == unix.NLMSG_ERROR {
				if len(r.Data) < 4 {
					return fmt.Errorf("short netlink error message")
				}
				if code := int32(binary.NativeEndian.Uint32(r.Data)); code != 0 {
					return unix.Errno(-code)
				}
				if r.Header.Seq == ackSeq {
					return nil
				}
				continue
			}
			if onMsg != nil && len(r.Data) >= 4 {
				if err := onMsg(r.Header.Type, r.Data[4:]); errors.Is(err, errDone) {
					return nil
				} else if err != nil {
					return err
				}
			}
		}
	}
}

// nlmsg builds one netlink message with an nfgenmsg header (family, version 0, resource id).
func nlmsg(typ, flags uint16, seq uint32, family uint8, resID uint16, attrs []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(attrs))
	binary.NativeEndian.PutUint32(b[0:], uint32(unix.NLMSG_HDRLEN+4+len(attrs)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	b[16] = family
	binary.BigEndian.PutUint16(b[18:], resID)
	return append(b, attrs...)
}

// nlattr builds one netlink attribute, padded to 4 bytes.
func nlattr(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nlattrs iterates over the attributes in b.
func nlattrs(b []byte) func(yield func(uint16, []byte) bool) {
	return func(yield func(uint16, []byte) bool) {
		for len(b) >= 4 {
			l := int(binary.NativeEndian.Uint16(b[0:]))
			typ := binary.NativeEndian.Uint16(b[2:]) &^ unix.NLA_F_NESTED
			if l < 4 || l > len(b) {
				return
			}
			if !yield(typ, b[4:l]) {
				return
			}
			b = b[min((l+3)&^3, len(b)):]
		}
	}
}
