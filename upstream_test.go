package oauth2upstream

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// apiServer is the upstream API of the handler tests: it accepts one access
// token at a time (the one the test says is valid), answers 401 with
// WWW-Authenticate otherwise, and reports what it received.
type apiServer struct {
	server *httptest.Server

	mu       sync.Mutex // guards the fields below
	valid    string     // the header value it accepts
	requests []apiRequest
	// rejectUnread answers 401 before reading the request body.
	rejectUnread bool
	// alwaysReject answers 401 to everything.
	alwaysReject bool
}

// apiRequest is what the API saw of one request.
type apiRequest struct {
	Authorization []string
	Status        int
	Length        int
	SHA256        string
}

// apiAnswer is the JSON body of a 200.
type apiAnswer struct {
	Length int    `json:"length"`
	SHA256 string `json:"sha256"`
}

func newAPIServer(t *testing.T, valid string) *apiServer {
	a := &apiServer{valid: valid}
	a.server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.server.Close)
	return a
}

func (a *apiServer) setValid(v string) {
	a.mu.Lock()
	a.valid = v
	a.mu.Unlock()
}

func (a *apiServer) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	valid, rejectUnread, alwaysReject := a.valid, a.rejectUnread, a.alwaysReject
	a.mu.Unlock()
	seen := apiRequest{Authorization: r.Header.Values("Authorization")}
	ok := !alwaysReject && len(seen.Authorization) == 1 && seen.Authorization[0] == valid
	if ok || !rejectUnread {
		body, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(body)
		seen.Length, seen.SHA256 = len(body), hex.EncodeToString(sum[:])
	}
	if ok {
		seen.Status = http.StatusOK
	} else {
		seen.Status = http.StatusUnauthorized
	}
	a.mu.Lock()
	a.requests = append(a.requests, seen)
	a.mu.Unlock()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.Header().Set("X-Rejected", "yes")
		http.Error(w, "token rejected", http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(apiAnswer{Length: seen.Length, SHA256: seen.SHA256})
}

func (a *apiServer) seen() []apiRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]apiRequest(nil), a.requests...)
}
