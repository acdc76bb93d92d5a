package authserver

import "time"

// outage is a token endpoint that is down for a while, rather than one
// that fails a few requests (InjectFaults).
type outage struct {
	fault   Fault         // what every token request gets; 0: none
	changed chan struct{} // closed when fault changes, releasing FaultHang
}

// SetOutage makes every token request get fault, before any armed fault
// and without using one up, until SetOutage(0) ends the outage. FaultHang
// holds requests until the outage changes. Outage answers are not counted
// in InjectedFaults, but in OutageRequests.
func (s *Server) SetOutage(fault Fault) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	if s.faults.outage.changed != nil {
		close(s.faults.outage.changed)
	}
	s.faults.outage = outage{fault: fault, changed: make(chan struct{})}
}

// OutageRequests returns when the token requests answered by an outage
// arrived, oldest first.
func (s *Server) OutageRequests() []time.Time {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return append([]time.Time(nil), s.faults.outageAnswers...)
}
