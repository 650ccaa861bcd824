package cluster

import (
	"strings"
	"testing"
)

// TestZeroLossScenarios: the surges SurgesInOneLoad takes by index are the
// rollout restart and the image change, and the test's list runs every other
// scenario once, with the uninstall (which must leave the node clean) last.
func TestZeroLossScenarios(t *testing.T) {
	if !strings.Contains(Scenarios[0].Name, "rollout restart") || !strings.Contains(Scenarios[1].Name, "set image") {
		t.Fatalf("Scenarios[0:2] are %q and %q, want the two surge rollouts", Scenarios[0].Name, Scenarios[1].Name)
	}
	if len(ZeroLossScenarios) != len(Scenarios)-1 {
		t.Fatalf("%d scenarios as tested, want %d: the %d of Scenarios with the surges as one", len(ZeroLossScenarios), len(Scenarios)-1, len(Scenarios))
	}
	for i, s := range Scenarios[2:] {
		if got := ZeroLossScenarios[i+1].Name; got != s.Name {
			t.Fatalf("scenario %d as tested is %q, want %q", i+1, got, s.Name)
		}
	}
	if last := ZeroLossScenarios[len(ZeroLossScenarios)-1].Name; !strings.Contains(last, "uninstall") {
		t.Fatalf("the last scenario is %q, want the uninstall", last)
	}
}
