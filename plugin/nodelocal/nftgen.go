package nodelocal

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// RulesetGeneration returns a number that changes whenever any rule of the
// node changes, if the backend keeps one: nf_tables counts every ruleset
// change in the network namespace. ok is false for a backend without one.
type RulesetGeneration func(Backend) (gen uint32, ok bool, err error)

// nftGeneration asks nf_tables for its generation: one netlink request, where
// a listing costs an iptables process per table.
func nftGeneration(b Backend) (uint32, bool, error) {
	if b != BackendNFT {
		return 0, false, nil
	}
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN, 0)
	req.AddData(nfgenmsg{})
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		return 0, false, fmt.Errorf("read the nf_tables generation: %w", wrapPermission(err))
	}
	for _, msg := range msgs {
		if len(msg) < nfgenmsgLen {
			continue
		}
		attrs, err := nl.ParseRouteAttr(msg[nfgenmsgLen:])
		if err != nil {
			return 0, false, fmt.Errorf("read the nf_tables generation: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type&^(nl.NLA_F_NESTED|nl.NLA_F_NET_BYTEORDER) == unix.NFTA_GEN_ID && len(a.Value) == 4 {
				return binary.BigEndian.Uint32(a.Value), true, nil
			}
		}
	}
	return 0, false, errors.New("read the nf_tables generation: no NFTA_GEN_ID in the kernel's answer")
}

// nfgenmsg is nfnetlink's message header: any family, version 0.
type nfgenmsg struct{}

const nfgenmsgLen = 4

func (nfgenmsg) Len() int          { return nfgenmsgLen }
func (nfgenmsg) Serialize() []byte { return []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0} }
