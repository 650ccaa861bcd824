package harness

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Query sends one query from ns to server (an IP, IPv6 with or without
// brackets; port 53) over udp or tcp.
func Query(ns *Netns, network, server, name string, qtype uint16) (*dns.Msg, error) {
	return QueryTimeout(ns, network, server, name, qtype, 2*time.Second)
}

// QueryTimeout is Query with its own timeout.
func QueryTimeout(ns *Netns, network, server, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if !strings.HasPrefix(server, "[") {
		server = net.JoinHostPort(server, "53")
	} else {
		server += ":53"
	}
	conn, err := ns.DialContext(ctx, network, server)
	if err != nil {
		return nil, err
	}
	c := &dns.Conn{Conn: conn}
	defer c.Close()
	return Exchange(c, name, qtype, timeout)
}

// Exchange asks name on an open connection and reads the reply.
func Exchange(c *dns.Conn, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c.SetDeadline(time.Now().Add(timeout))
	if err := c.WriteMsg(m); err != nil {
		return nil, err
	}
	return c.ReadMsg()
}

// WaitForAnswer polls until server answers name (NOERROR) from ns over UDP.
// Each attempt waits 100 ms at most: a query sent before the server could
// answer is lost, and must not use up the whole timeout.
func (n *Node) WaitForAnswer(ns *Netns, server, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		r, err := QueryTimeout(ns, "udp", server, name, dns.TypeA, min(100*time.Millisecond, time.Until(deadline)))
		if err == nil && r.Rcode == dns.RcodeSuccess {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer for %s from %s within %v: %v", name, server, timeout, lastErr)
}
