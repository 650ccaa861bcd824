package nodelocal

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Links reads and changes the node's interfaces and addresses.
type Links interface {
	// Addresses maps each address of the node to the links holding it
	// (kube-proxy's IPVS mode may put one we hold on kube-ipvs0 too).
	Addresses() (map[netip.Addr][]string, error)
	LinkExists(name string) (bool, error)
	// AddLink creates the interface and returns the link kind used.
	AddLink(name string) (kind string, err error)
	DeleteLink(name string) error
	AddAddress(link string, ip netip.Addr) error
	DeleteAddress(link string, ip netip.Addr) error
	// Watch calls notify on every link or address change until stop is closed.
	Watch(stop <-chan struct{}, notify func()) error
}

// netlinkLinks is Links on the kernel, through netlink.
type netlinkLinks struct{}

func (netlinkLinks) Addresses() (map[netip.Addr][]string, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	names := map[int]string{}
	out := make(map[netip.Addr][]string, len(addrs))
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		name, known := names[a.LinkIndex]
		if !known {
			if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				name = l.Attrs().Name
			}
			names[a.LinkIndex] = name
		}
		out[ip.Unmap()] = append(out[ip.Unmap()], name)
	}
	return out, nil
}

func (netlinkLinks) LinkExists(name string) (bool, error) {
	_, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, nil
	}
	return err == nil, err
}

// AddLink creates a dummy interface, as upstream does. Kernels built without
// the dummy driver get a bridge with no ports instead: addresses on it are
// local to the node just the same, and no traffic is bridged anywhere.
func (netlinkLinks) AddLink(name string) (string, error) {
	attrs := netlink.LinkAttrs{Name: name}
	kind := "dummy"
	err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: attrs})
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) {
		kind = "bridge"
		err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
	}
	if err != nil {
		return "", fmt.Errorf("create interface %s: %w", name, wrapPermission(err))
	}
	l, err := netlink.LinkByName(name)
	if err == nil {
		// Up, so that IPv6 addresses get their local routes too.
		err = netlink.LinkSetUp(l)
	}
	if err != nil {
		return kind, fmt.Errorf("bring up interface %s: %w", name, wrapPermission(err))
	}
	return kind, nil
}

func (netlinkLinks) DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil // already gone
	}
	return wrapPermission(netlink.LinkDel(l))
}

func linkAddr(link string, ip netip.Addr) (netlink.Link, *netlink.Addr, error) {
	l, err := netlink.LinkByName(link)
	if err != nil {
		return nil, nil, fmt.Errorf("interface %s: %w", link, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}}
	if ip.Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once: nothing else answers on this link
	}
	return l, a, nil
}

func (netlinkLinks) AddAddress(link string, ip netip.Addr) error {
	l, a, err := linkAddr(link, ip)
	if err != nil {
		return err
	}
	if err := netlink.AddrReplace(l, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", ip, link, wrapPermission(err))
	}
	return nil
}

func (netlinkLinks) DeleteAddress(link string, ip netip.Addr) error {
	l, a, err := linkAddr(link, ip)
	if err != nil {
		return nil
	}
	if err := netlink.AddrDel(l, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from %s: %w", ip, link, wrapPermission(err))
	}
	return nil
}

// Watch reads link and address events from one rtnetlink socket, through
// Go's poller. It does not use the netlink library's subscriptions: each of
// them parks a goroutine on a 64 KiB receive buffer on its stack, and Go sizes
// every new goroutine's stack from the average it scans, so the two of them
// made each query's goroutine start with a larger stack. That cost node-cache
// about 3% of its cache-hit throughput (the bench's profiles: page faults on
// stack allocation and the scavenger's madvise). The events' content is not
// needed: any event triggers a check of the interface.
func (netlinkLinks) Watch(stop <-chan struct{}, notify func()) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open a netlink socket for link and address events: %w", err)
	}
	groups := uint32(unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("subscribe to link and address events: %w", err)
	}
	events := os.NewFile(uintptr(fd), "rtnetlink events") // non-blocking: served by the poller
	go func() {
		<-stop
		events.Close()
	}()
	go func() {
		// A read takes one event and drops what does not fit: only its arrival matters.
		var event [64]byte
		for {
			_, err := events.Read(event[:])
			switch {
			case errors.Is(err, os.ErrClosed):
				return
			case errors.Is(err, unix.ENOBUFS):
				// The socket overflowed and events were lost: check anyway.
			case err != nil:
				log.Warningf("Reading link and address events failed (%v): the interface is checked every check_interval only", err)
				events.Close()
				return
			}
			notify()
		}
	}()
	return nil
}

// wrapPermission turns EPERM into an error that names the missing capability.
func wrapPermission(err error) error {
	if errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("%w: the NET_ADMIN capability is missing; add it to the container's securityContext.capabilities", err)
	}
	return err
}
