// Package discoverytest serves authorization server metadata to tests.
package discoverytest

import (
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// Server is an authorization server on loopback that serves its metadata
// document at its OpenID Connect Discovery location, and 404 at any other
// path, counting the requests for the document.
type Server struct {
	server   *httptest.Server
	requests atomic.Int64
}

// NewServer serves doc, with "issuer" set to the server's URL unless doc
// names one, until the test ends.
func NewServer(t testing.TB, doc map[string]any) *Server {
	t.Helper()
	s := new(Server)
	s.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		s.requests.Add(1)
		answer := maps.Clone(doc)
		if answer == nil {
			answer = map[string]any{}
		}
		if _, ok := answer["issuer"]; !ok {
			answer["issuer"] = s.server.URL
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(answer)
	}))
	t.Cleanup(s.server.Close)
	return s
}

// Issuer is the server's issuer identifier: its URL.
func (s *Server) Issuer() string { return s.server.URL }

// Requests is how many times the document was asked for.
func (s *Server) Requests() int { return int(s.requests.Load()) }
