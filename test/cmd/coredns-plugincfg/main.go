// Command coredns-plugincfg is stock CoreDNS built with node-cache's plugins
// and order (plugin.cfg) minus ours (nodelocal, coalesce): the benchmarks'
// reference for what the nodelocal plugin costs, since the plugins compiled in change the speed
// of the binary as a whole (see docs/benchmarks.md).
package main

//go:generate go run ../../../build/directivegen -cfg ../../../plugin.cfg -out . -without nodelocal,coalesce

import "github.com/coredns/coredns/coremain"

func main() { coremain.Run() }
