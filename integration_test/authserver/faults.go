package authserver

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Fault is a failure the token endpoint answers instead of a grant.
type Fault int

// Faults that InjectFaults can arm.
const (
	// FaultInvalidRequest answers 400 invalid_request, as Ory Hydra does
	// when its storage reports a conflict between concurrent refreshes of
	// one token: the refresh token was not spent, and the client is told
	// to retry.
	FaultInvalidRequest Fault = iota + 1
	// FaultUnavailable answers 503 with a short text body, as a load
	// balancer with no healthy backend does.
	FaultUnavailable
	// FaultReset resets the connection (SO_LINGER 0, then close) once the
	// request has arrived: the client gets no answer, only a reset.
	FaultReset
	// FaultHang holds the request unanswered, as a token endpoint behind a
	// stalled proxy does; only an outage (SetOutage) arms it, and the
	// request is answered with a 503 when the outage changes or ends.
	FaultHang
)

// invalidRequestBody is Ory Hydra's answer to a refresh that lost a
// storage conflict.
const invalidRequestBody = `{"error":"invalid_request","error_description":"Failed to refresh token because of multiple concurrent requests using the same token. Please retry the request."}`

func (f Fault) String() string {
	switch f {
	case FaultInvalidRequest:
		return "400 invalid_request"
	case FaultUnavailable:
		return "503"
	case FaultReset:
		return "connection reset"
	case FaultHang:
		return "hang"
	}
	return fmt.Sprintf("Fault(%d)", int(f))
}

// InjectedFault is one token request that got a fault.
type InjectedFault struct {
	// At is when the fault was answered.
	At    time.Time
	Fault Fault
}

// faultInjector makes token requests fail before they reach fosite.
type faultInjector struct {
	mu            sync.Mutex // guards armed, injected, outage and outageAnswers
	armed         []Fault    // what the next token requests get, in order
	injected      []InjectedFault
	outage        outage      // what every token request gets meanwhile (outage.go)
	outageAnswers []time.Time // when token requests arrived during an outage
}

// InjectFaults makes the next n token requests, after those already armed,
// fail with fault. They fail before fosite sees them: no refresh token is
// spent, and GrantCounts does not count them.
func (s *Server) InjectFaults(fault Fault, n int) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	for range n {
		s.faults.armed = append(s.faults.armed, fault)
	}
}

// ArmedFaults counts the faults armed and not yet answered.
func (s *Server) ArmedFaults() int {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return len(s.faults.armed)
}

// InjectedFaults returns the faults answered so far, oldest first.
func (s *Server) InjectedFaults() []InjectedFault {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return append([]InjectedFault(nil), s.faults.injected...)
}

// next takes the fault of the outage in progress, with the channel closed
// when it changes; else the next armed fault, recording it as answered; 0
// when none is armed.
func (fi *faultInjector) next() (Fault, <-chan struct{}) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	if fi.outage.fault != 0 {
		fi.outageAnswers = append(fi.outageAnswers, time.Now())
		return fi.outage.fault, fi.outage.changed
	}
	if len(fi.armed) == 0 {
		return 0, nil
	}
	fault := fi.armed[0]
	fi.armed = fi.armed[1:]
	fi.injected = append(fi.injected, InjectedFault{At: time.Now(), Fault: fault})
	return fault, nil
}

// wrap answers the next armed fault instead of calling handler.
func (fi *faultInjector) wrap(handler http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		fault, changed := fi.next()
		switch fault {
		case 0:
			handler(w, r)
			return
		case FaultInvalidRequest:
			w.Header().Set("Content-Type", "application/json;charset=UTF-8")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, invalidRequestBody)
		case FaultUnavailable:
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "upstream unavailable\n")
		case FaultReset:
			resetConnection(w)
		case FaultHang:
			select {
			case <-changed:
			case <-r.Context().Done():
				return
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}
}

// resetConnection closes the request's connection with SO_LINGER 0, so that
// the kernel sends a reset instead of a FIN.
func resetConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // closes the connection, without a reset
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}
