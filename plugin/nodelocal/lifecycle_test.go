package nodelocal

import (
	"testing"
)

// TestPhaseTable: every phase is named, reachable from new, and leads to
// shutDown, so no process can be stuck in a phase with no way out.
func TestPhaseTable(t *testing.T) {
	if len(phaseNames) != int(phaseShutDown)+1 || len(phaseTransitions) != len(phaseNames) {
		t.Fatalf("%d names and %d table rows for %d phases", len(phaseNames), len(phaseTransitions), phaseShutDown+1)
	}
	reached := map[phase]bool{phaseNew: true}
	for grew := true; grew; {
		grew = false
		for from := range reached {
			for _, to := range phaseTransitions[from] {
				if !reached[to] {
					reached[to], grew = true, true
				}
			}
		}
	}
	for p := phaseNew; p <= phaseShutDown; p++ {
		if !reached[p] {
			t.Errorf("phase %s cannot be reached from new", p)
		}
		if p != phaseShutDown && !p.mayLeadTo(phaseShutDown) {
			t.Errorf("phase %s cannot shut down", p)
		}
	}
}

// TestPhasesOfALife walks an instance through every step of the protocol on
// the fake node and checks the phase after each.
func TestPhasesOfALife(t *testing.T) {
	cases := []struct {
		name  string
		peers int // other instances' sockets on the IPs when the stop begins
		cfg   func(*Config)
		stop  phase
	}{
		{name: "no successor", stop: phaseDraining},
		{name: "no successor, unconditional rules", cfg: func(c *Config) { c.FailOpen = false }, stop: phaseHandedOff},
		{name: "surge", peers: 2, stop: phaseLeaving},
		{name: "skip teardown", cfg: func(c *Config) { c.Teardown = false }, stop: phaseStopping},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNode(t)
			cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
			if tc.cfg != nil {
				tc.cfg(cfg)
			}
			want := func(step string, p phase) {
				t.Helper()
				if n.mgr.phase != p {
					t.Fatalf("after %s: phase %s, want %s", step, n.mgr.phase, p)
				}
			}
			want("nothing", phaseNew)
			if err := n.mgr.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			start := phaseWithholding
			if !cfg.FailOpen {
				start = phaseStarting // nothing to take over from an unconditional rule
			}
			want("Apply", start)
			n.mgr.ListenersUp()
			if cfg.FailOpen {
				want("ListenersUp", phaseTakingOver)
				n.mgr.finishTakeover()
			}
			want("the takeover", phaseServing)
			n.mgr.PauseForReload()
			want("PauseForReload", phaseReloadPause)
			n.mgr.OldServersStopped()
			want("OldServersStopped", phaseServing)
			n.peers.others = tc.peers
			n.mgr.HandOff()
			want("HandOff", tc.stop)
			n.mgr.Shutdown()
			want("Shutdown", phaseShutDown)
		})
	}
}

// TestStopBeforeTheListenersAreUp: a SIGTERM while the listeners open puts
// no rule in, and Shutdown still tears down.
func TestStopBeforeTheListenersAreUp(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
		t.Fatal(err)
	}
	n.mgr.HandOff()
	n.mgr.ListenersUp()
	if n.mgr.phase != phaseWithholding || n.tables[IPv4].count() != 0 || n.mgr.Ready() {
		t.Fatalf("phase %s, %d rules, ready %v: want no step, no rule, not ready", n.mgr.phase, n.tables[IPv4].count(), n.mgr.Ready())
	}
	n.mgr.Shutdown()
	if len(n.links.links) != 0 || n.mgr.phase != phaseShutDown {
		t.Fatalf("links %v, phase %s after Shutdown", n.links.links, n.mgr.phase)
	}
}
