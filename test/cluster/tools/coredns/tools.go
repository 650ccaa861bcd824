//go:build tools

// Package tools pins stock CoreDNS with its default plugins (kubernetes among
// them): the test cluster's kube-dns.
package tools

import _ "github.com/coredns/coredns"
