package credential

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
)

// maxDrain is how much of a rejected answer's body is read before it is
// closed, so that its connection can be reused for the replay.
const maxDrain = 64 << 10

// Transport is an http.RoundTripper that authenticates requests with a key
// set of an Engine, for Go programs that want the sidecar's behaviour
// in-process: it sets the credential header (replacing whatever the request
// carried), and when the server answers a trigger status it gets a newer
// credential from the engine (refreshing once however many requests wait)
// and replays the request once, its body from Request.GetBody. A request
// with a body but no GetBody is not replayed: its trigger answer is
// returned as it came, as is one that rejected a token younger than the
// engine's minimum refresh interval (see TooRecentError).
//
//	engine := credential.New(store, credential.Config{Endpoint: endpoint})
//	defer engine.Close()
//	client := &http.Client{Transport: &credential.Transport{Engine: engine, KeySet: "crm"}}
type Transport struct {
	// Engine provides and refreshes the credentials.
	Engine *Engine
	// KeySet names the key set whose token is sent.
	KeySet string
	// HeaderName is the request header that carries the token.
	// Default: Authorization.
	HeaderName string
	// RefreshOn lists the statuses that mean "token rejected".
	// Default: 401.
	RefreshOn []int
	// Base sends the requests. Default: http.DefaultTransport.
	Base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	cred, err := t.Engine.Current(req.Context(), t.KeySet)
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("authenticating %s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	resp, err := t.base().RoundTrip(t.authorized(req, cred))
	if err != nil || !t.rejects(resp.StatusCode) {
		return resp, err
	}
	hasBody := req.Body != nil && req.Body != http.NoBody
	if hasBody && req.GetBody == nil {
		return resp, nil // nothing to replay the body from
	}
	fresh, err := t.Engine.Rejected(req.Context(), t.KeySet, cred.KeySet.Generation)
	var tooRecent *TooRecentError
	if errors.As(err, &tooRecent) {
		return resp, nil // the token is too new to be the reason: no grant, no replay
	}
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("refreshing after %s %s answered %d: %w", req.Method, req.URL.Redacted(), resp.StatusCode, err)
	}
	replay := t.authorized(req, fresh)
	if hasBody {
		body, err := req.GetBody()
		if err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("replaying %s %s: getting the body again: %w", req.Method, req.URL.Redacted(), err)
		}
		replay.Body = body
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	resp.Body.Close()
	return t.base().RoundTrip(replay)
}

// authorized returns a copy of req that carries cred in the credential
// header, as its only credential: the same header in the trailer is
// removed. A RoundTripper must not modify the request it is given.
func (t *Transport) authorized(req *http.Request, cred *Credential) *http.Request {
	out := req.Clone(req.Context())
	name := t.headerName()
	out.Header.Set(name, cred.Header)
	if out.Trailer != nil {
		out.Trailer.Del(name)
	}
	return out
}

func (t *Transport) rejects(status int) bool {
	if len(t.RefreshOn) == 0 {
		return status == http.StatusUnauthorized
	}
	return slices.Contains(t.RefreshOn, status)
}

func (t *Transport) headerName() string {
	if t.HeaderName == "" {
		return "Authorization"
	}
	return t.HeaderName
}

func (t *Transport) base() http.RoundTripper {
	if t.Base == nil {
		return http.DefaultTransport
	}
	return t.Base
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
