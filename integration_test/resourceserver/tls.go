package resourceserver

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// TLSEndpoint serves the resource server's API over TLS, as a real API is reached, and
// records the Host header and the TLS server name (SNI) of every request it receives: the
// transparent mode's sidecar must pass both on as the connector sent them.
type TLSEndpoint struct {
	httpServer *http.Server
	addr       string
	done       chan struct{}

	mu          sync.Mutex // guards the fields below
	hosts       []string
	serverNames []string
}

// ServeTLS starts serving s's API over TLS with cert on another kernel-chosen loopback port.
// Close the endpoint before s.
func (s *Server) ServeTLS(cert tls.Certificate) (*TLSEndpoint, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("resourceserver: listen: %w", err)
	}
	e := &TLSEndpoint{addr: ln.Addr().String(), done: make(chan struct{})}
	e.httpServer = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			e.record(r)
			s.serveHTTP(w, r)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		defer close(e.done)
		_ = e.httpServer.ServeTLS(ln, "", "") // returns http.ErrServerClosed on Close
	}()
	return e, nil
}

// Addr is the endpoint's address, "127.0.0.1:PORT".
func (e *TLSEndpoint) Addr() string { return e.addr }

func (e *TLSEndpoint) record(r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hosts = append(e.hosts, r.Host)
	if r.TLS != nil {
		e.serverNames = append(e.serverNames, r.TLS.ServerName)
	} else {
		e.serverNames = append(e.serverNames, "")
	}
}

// Seen returns the Host header and the TLS server name of each request received, in order.
func (e *TLSEndpoint) Seen() (hosts, serverNames []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.hosts), slices.Clone(e.serverNames)
}

// Close stops the endpoint and closes its connections.
func (e *TLSEndpoint) Close() error {
	err := e.httpServer.Close()
	<-e.done
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("resourceserver: close TLS endpoint: %w", err)
	}
	return nil
}
