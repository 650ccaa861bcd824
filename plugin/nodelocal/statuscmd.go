package nodelocal

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// Exit statuses of `node-cache status`.
const (
	statusOK       = 0 // every instance is as desired
	statusProblems = 1 // some instance reports a problem
	statusNoAnswer = 2 // no instance could be asked
)

// StatusCommand runs `node-cache status [-o text|json] [-dir DIR]`: it asks
// the instances of this node for their status, prints it, and exits non-zero
// when something is not as desired, so scripts and probes can use it.
func StatusCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("node-cache status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	output := fs.String("o", "text", "output format: text or json")
	dir := fs.String("dir", "", "the instance directory (default $"+stateDirEnv+", else "+DefaultStateDir+")")
	timeout := fs.Duration("timeout", 10*time.Second, "how long each instance may take to answer (it lists the rules)")
	if err := fs.Parse(args); err != nil {
		return statusNoAnswer
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "node-cache status: -o %q: want text or json\n", *output)
		return statusNoAnswer
	}
	if *dir == "" {
		*dir = DefaultStateDir
		if d := os.Getenv(stateDirEnv); d != "" {
			*dir = d
		}
	}
	if fi, err := os.Stat(*dir); err != nil || !fi.IsDir() {
		fmt.Fprintf(stderr, "node-cache status: no instance directory %s: run it in the node-local-dns pod (kubectl exec ds/node-local-dns -- /node-cache status), or on the node as root; the manifests mount it as a hostPath\n", *dir)
		return statusNoAnswer
	}
	statuses, err := QueryStatus(*dir, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "node-cache status: %v\n", err)
	}
	if len(statuses) == 0 {
		fmt.Fprintf(stderr, "node-cache status: no node-cache instance answers in %s\n", *dir)
		return statusNoAnswer
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			Instances []Status `json:"instances"`
		}{statuses})
	} else {
		for i, st := range statuses {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			writeStatusText(stdout, st)
		}
	}
	for _, st := range statuses {
		if len(st.Problems) > 0 {
			return statusProblems
		}
	}
	return statusOK
}

// writeStatusText prints one instance's status for people: a line per
// owner, the rules that are not in place, and the problems.
func writeStatusText(w io.Writer, st Status) {
	line := func(key, format string, args ...any) {
		fmt.Fprintf(w, "%-12s %s\n", key+":", fmt.Sprintf(format, args...))
	}
	line("node-cache", "%s", st.Version)
	line("phase", "%s", st.Phase)
	if st.Ready {
		line("ready", "yes")
	} else {
		line("ready", "no: %s", st.NotReady)
	}
	iface := st.Interface.Name + " " + strings.Join(st.Interface.Addresses, " ")
	if !st.Interface.Managed {
		iface = "not managed (no_interface)"
	}
	for _, ip := range slices.Sorted(maps.Keys(st.Interface.Foreign)) {
		iface += fmt.Sprintf("; %s is on %s, not intercepted", ip, st.Interface.Foreign[ip])
	}
	line("interface", "%s", iface)
	socket := "socket-matched: fails open"
	if !st.SocketMatch {
		socket = "unconditional: the kernel refused the socket match"
	}
	line("backend", "%s (%s)", st.Backend, socket)
	inPlace := 0
	for _, r := range st.Rules {
		if r.InPlace {
			inPlace++
		}
	}
	line("rules", "%d of %d in place, %d extra", inPlace, len(st.Rules), len(st.ExtraRules))
	for _, r := range st.Rules {
		if !r.InPlace {
			fmt.Fprintf(w, "  missing: %s\n", r.Rule)
		}
	}
	for _, r := range st.ExtraRules {
		fmt.Fprintf(w, "  extra:   %s\n", r)
	}
	line("peers", "%d sockets of other instances, %d of other programs", st.PeerSockets, st.ForeignSockets)
	if len(st.UpstreamPins) == 0 {
		line("pins", "none")
	}
	for _, up := range slices.Sorted(maps.Keys(st.UpstreamPins)) {
		line("pins", "%s -> %s", up, strings.Join(st.UpstreamPins[up], " "))
	}
	line("kube-dns", "%d connections left to it", len(st.KubeDNSConnections))
	if st.LastRepair != nil {
		line("last repair", "%s, %s ago", st.LastRepair.What, time.Since(st.LastRepair.At).Round(time.Second))
	} else {
		line("last repair", "none")
	}
	for _, p := range st.Problems {
		fmt.Fprintf(w, "PROBLEM: %s\n", p)
	}
}
