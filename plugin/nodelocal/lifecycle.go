package nodelocal

import "slices"

// phase is where this process is in its life as the node's cache: taking the
// Service IPs over from kube-dns, serving, pausing for a reload, handing its
// flows off when it stops, and shut down. It decides which rules are desired
// (ruleMode) and what each step of the protocol does (start.go, reload.go,
// stop.go). Every change of phase goes through enter, under the manager's
// lock, and follows this table:
//
//	phase        what holds                                        next, on
//	-----------  ------------------------------------------------  ------------------------------------------
//	new          nothing applied yet                               starting: Apply (first start)
//	starting     interface up, listeners not yet: no rules         withholding: Apply, kube-dns serves the Service IPs
//	                                                               serving: ListenersUp, nothing to take over
//	withholding  starting; the Service IPs' TCP interception is    takingOver: ListenersUp (beside a handed-off
//	             left out, so kube-dns's open connections finish     instance: afterHandOffWait later)
//	                                                               serving: ListenersUp, the pause failed
//	takingOver   listeners up; SYNs only are intercepted on the    serving: takeoverDrain elapsed, or HandOff
//	             Service IPs and our paused listeners drop them
//	serving      every rule in place; checks repair                reloadPause: PauseForReload
//	                                                               leaving, handedOff, draining, stopping: HandOff
//	reloadPause  serving; TCP listeners refuse new connections     serving: OldServersStopped (their connections
//	             while a reload moves them to the new servers,     carried over), ReloadFailed, or maxReloadPause
//	             and the old servers' connections are held open    leaving, handedOff, draining, stopping: HandOff
//	leaving      stopping; a peer serves the same IPs and has      shutDown: Shutdown
//	             our flows; every rule stays for it
//	handedOff    stopping; the Service IPs' interception is gone   shutDown: Shutdown
//	             (kube-proxy sends new queries to kube-dns)
//	draining     handedOff, but their TCP interception stays: our  shutDown: Shutdown
//	             listeners are shut, so it holds open connections
//	stopping     stopping with everything left as it is            shutDown: Shutdown
//	             (skip_teardown, or peers could not be counted)
//	shutDown     checks stopped; torn down unless skip_teardown    (the process exits)
//	             or a peer still serves
//
// A stop that begins before the listeners are up (starting, withholding)
// changes no phase: the rules never go in, and Shutdown tears down.
// The stop itself is also kept in readiness, marked before the lock is
// taken, so readiness drops at once even while a check holds the lock.
type phase int

const (
	phaseNew phase = iota
	phaseStarting
	phaseWithholding
	phaseTakingOver
	phaseServing
	phaseReloadPause
	phaseLeaving
	phaseHandedOff
	phaseDraining
	phaseStopping
	phaseShutDown
)

var phaseNames = [...]string{"new", "starting", "withholding", "takingOver", "serving", "reloadPause",
	"leaving", "handedOff", "draining", "stopping", "shutDown"}

func (p phase) String() string { return phaseNames[p] }

// stopPhases are where serving and reloadPause may lead: HandOff's four
// outcomes, or Shutdown without a HandOff first.
var stopPhases = []phase{phaseLeaving, phaseHandedOff, phaseDraining, phaseStopping, phaseShutDown}

// phaseTransitions is the table above: the phases each phase may lead to.
// Shutdown may come from any phase (a process that stops early).
var phaseTransitions = map[phase][]phase{
	phaseNew:         {phaseStarting, phaseShutDown},
	phaseStarting:    {phaseWithholding, phaseServing, phaseShutDown},
	phaseWithholding: {phaseTakingOver, phaseServing, phaseShutDown},
	phaseTakingOver:  {phaseServing, phaseShutDown},
	phaseServing:     append([]phase{phaseReloadPause}, stopPhases...),
	phaseReloadPause: append([]phase{phaseServing}, stopPhases...),
	phaseLeaving:     {phaseShutDown},
	phaseHandedOff:   {phaseShutDown},
	phaseDraining:    {phaseShutDown},
	phaseStopping:    {phaseShutDown},
	phaseShutDown:    {},
}

// enter moves to phase to. A move the table does not allow is a bug in the
// protocol: it is logged, and made, so the process still reaches its end.
func (m *manager) enter(to phase) {
	if m.phase == to {
		return
	}
	if !m.phase.mayLeadTo(to) {
		log.Errorf("Unexpected lifecycle step from %s to %s", m.phase, to)
	}
	m.phase = to
}

func (p phase) mayLeadTo(to phase) bool { return slices.Contains(phaseTransitions[p], to) }

// listenersUp: the DNS listeners are up and the process has not shut down,
// so rules may be in place.
func (p phase) listenersUp() bool { return p >= phaseTakingOver && p < phaseShutDown }

// ownsRules: the checks keep the rules as this phase wants them. Once the stop
// has begun they are left as the handoff set them: a successor that starts
// meanwhile (a deleted pod's replacement starts during its lameduck) keeps
// its own, and the two must not undo each other's.
func (p phase) ownsRules() bool { return p >= phaseTakingOver && p <= phaseReloadPause }

// handedToKubeProxy: the Service IPs' interception is being given back.
func (p phase) handedToKubeProxy() bool { return p == phaseHandedOff || p == phaseDraining }

// ruleMode is how much of the Service IPs' interception the phase wants
// (desired.go).
func (p phase) ruleMode() ruleMode {
	switch p {
	case phaseTakingOver:
		return modeSYNOnly
	case phaseHandedOff:
		return modeHandedBack
	case phaseDraining:
		return modeDraining
	}
	return modeFull
}
