package nodelocal

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Links reads and changes the node's interfaces and addresses.
type Links interface {
	// Addresses maps each address of the node to the link holding it.
	Addresses() (map[netip.Addr]string, error)
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

func (netlinkLinks) Addresses() (map[netip.Addr]string, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	names := map[int]string{}
	out := make(map[netip.Addr]string, len(addrs))
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
		out[ip.Unmap()] = name
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

// Watch subscribes to link and address events. A subscription that fails is
// opened again, so events keep flowing for the life of the process.
func (netlinkLinks) Watch(stop <-chan struct{}, notify func()) error {
	subscribe := func(done chan struct{}, failed func(error)) error {
		links := make(chan netlink.LinkUpdate, 64)
		addrs := make(chan netlink.AddrUpdate, 64)
		if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: failed}); err != nil {
			return fmt.Errorf("subscribe to link events: %w", err)
		}
		if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: failed}); err != nil {
			return fmt.Errorf("subscribe to address events: %w", err)
		}
		go func() {
			for links != nil || addrs != nil {
				select {
				case _, ok := <-links:
					if !ok {
						links = nil
						continue
					}
				case _, ok := <-addrs:
					if !ok {
						addrs = nil
						continue
					}
				}
				notify()
			}
		}()
		return nil
	}
	done := make(chan struct{})
	failures := make(chan error, 1)
	failed := func(err error) {
		select {
		case failures <- err:
		default:
		}
	}
	if err := subscribe(done, failed); err != nil {
		close(done)
		return err
	}
	go func() {
		for {
			select {
			case <-stop:
				close(done)
				return
			case err := <-failures:
				log.Warningf("Netlink event subscription failed (%v); subscribing again", err)
				close(done)
				time.Sleep(100 * time.Millisecond)
				done = make(chan struct{})
				if err := subscribe(done, failed); err != nil {
					log.Errorf("%v; falling back to the periodic check only", err)
					return
				}
				notify() // events may have been missed
			}
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
