// Package admin is the module's operator interface on Caddy's admin
// endpoint: the /oauth2_upstream/ routes (key set status, seeding, forced
// refresh), the `caddy oauth2-upstream` command that talks to them, and the
// oauth2_upstream_health route for readiness probes. It reads the live
// handlers from their registry (internal/live), never their fields. No
// answer holds a token value (DESIGN.md invariant 7).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

func init() {
	caddy.RegisterModule(API{})
}

const (
	// maxBody caps a PUT body: a token response is a few KiB.
	maxBody = 1 << 20
	// requestTimeout bounds one admin request's keystore work and grant.
	requestTimeout = 2 * time.Minute
)

// API is the admin endpoint's /oauth2_upstream/ routes: the key sets of
// every live oauth2_upstream handler, their status, seeding or replacing one
// from a token response, and forcing a refresh. Its answers never hold a
// token value.
//
//	GET  /oauth2_upstream/key_sets?limit=&after=   the known key sets' status, a page at a time
//	GET  /oauth2_upstream/key_sets/<name>          one key set's status
//	PUT  /oauth2_upstream/key_sets/<name>          store a token response as its next generation
//	POST /oauth2_upstream/key_sets/<name>/refresh  make a grant now
//	GET  /oauth2_upstream/health                   whether every key set can serve, naming those that cannot
type API struct {
	logger   *zap.Logger
	registry *live.Registry // the live handlers the API acts on
}

// CaddyModule returns the Caddy module information.
func (API) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.oauth2_upstream",
		New: func() caddy.Module { return new(API) },
	}
}

// Provision sets up the API's logger and finds the registry of live
// handlers.
func (a *API) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger(a)
	a.registry = live.From(ctx)
	return nil
}

// Routes returns the API's one route, under which a ServeMux dispatches on
// method and path.
func (a *API) Routes() []caddy.AdminRoute {
	mux := http.NewServeMux()
	keySets := answer.AdminPrefix + "key_sets"
	one := keySets + "/{name}"
	mux.HandleFunc("GET "+keySets, a.list)
	mux.HandleFunc("GET "+keySets+"/{$}", a.list)
	mux.HandleFunc("GET "+one, a.withName(a.get))
	mux.HandleFunc("PUT "+one, a.withName(a.put))
	mux.HandleFunc("POST "+one+"/refresh", a.withName(a.refresh))
	mux.HandleFunc("GET "+answer.AdminPrefix+"health", a.health)
	// The same paths without a method answer 405 as a problem document; a
	// path with a method is the more specific pattern, so it wins.
	mux.HandleFunc(keySets, answer.MethodNotAllowed(http.MethodGet))
	mux.HandleFunc(one, answer.MethodNotAllowed(http.MethodGet, http.MethodPut))
	mux.HandleFunc(one+"/refresh", answer.MethodNotAllowed(http.MethodPost))
	mux.HandleFunc(answer.AdminPrefix+"health", answer.MethodNotAllowed(http.MethodGet))
	mux.HandleFunc(answer.AdminPrefix, answer.NotFound)
	serve := func(w http.ResponseWriter, r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		mux.ServeHTTP(w, r.WithContext(ctx))
		return nil
	}
	return []caddy.AdminRoute{{Pattern: answer.AdminPrefix, Handler: caddy.AdminHandlerFunc(serve)}}
}

// withName checks the {name} of the path before serve acts on it.
func (a *API) withName(serve func(w http.ResponseWriter, r *http.Request, name string)) http.HandlerFunc {
	return live.WithKeySetName(func(w http.ResponseWriter, _ *http.Request, err error) {
		answer.AdminProblem(w, http.StatusBadRequest, "Invalid key set name", err.Error(), "")
	}, serve)
}

// list answers the status of the known key sets, a page at a time, by
// name: at most limit (default 100, at most 1000) whose names sort after
// after. When more follow, a Link header (RFC 8288) names the next page.
func (a *API) list(w http.ResponseWriter, r *http.Request) {
	after, limit, err := live.ParsePage(r.URL.Query())
	if err != nil {
		answer.AdminProblem(w, http.StatusBadRequest, "Bad page", err.Error(), "")
		return
	}
	var all []credential.Status
	for _, h := range a.registry.Handlers.All() {
		// limit+1 from each: the one past the page says whether one follows.
		all = append(all, h.StatusesAfter(r.Context(), after, limit+1)...)
	}
	page := credential.MergeStatuses(all)
	if len(page) > limit {
		page = page[:limit]
		next := url.Values{"after": {page[limit-1].Name}, "limit": {strconv.Itoa(limit)}}
		w.Header().Set("Link", "<"+answer.AdminPrefix+"key_sets?"+next.Encode()+">; rel=\"next\"")
	}
	answer.JSON(w, http.StatusOK, page)
}

// serving returns the live handlers that can use key set name, and answers
// 404 when there are none.
func (a *API) serving(w http.ResponseWriter, name string) []*live.Handler {
	handlers := live.Serving(a.registry.Handlers.All(), name)
	if len(handlers) == 0 {
		answer.AdminProblem(w, http.StatusNotFound, "Unknown key set", fmt.Sprintf("no live oauth2_upstream handler can use key set %q", name), name)
	}
	return handlers
}

// get answers the status of key set name. A handler configured with that
// name shows it even when it cannot be loaded (with the reason); one with a
// placeholder key_set only shows it when it exists.
func (a *API) get(w http.ResponseWriter, r *http.Request, name string) {
	var found []credential.Status
	for _, h := range live.Serving(a.registry.Handlers.All(), name) {
		if s, ok := h.Status(r.Context(), name); ok {
			found = append(found, s)
		}
	}
	if len(found) == 0 {
		answer.AdminProblem(w, http.StatusNotFound, "Unknown key set", fmt.Sprintf("no live oauth2_upstream handler has key set %q", name), name)
		return
	}
	answer.JSON(w, http.StatusOK, credential.MergeStatuses(found)[0])
}

// put stores the token response in the body as the next generation of key
// set name, through every keystore that a handler serving name uses, and
// takes it into use at once.
func (a *API) put(w http.ResponseWriter, r *http.Request, name string) {
	token, err := readTokenResponse(w, r)
	if err != nil {
		status := http.StatusBadRequest
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		answer.AdminProblem(w, status, "Invalid token response", err.Error(), name)
		return
	}
	handlers := a.serving(w, name)
	if len(handlers) == 0 {
		return
	}
	ctx := r.Context()
	ks, err := live.OncePerKeystore(ctx, name, handlers, func(e *credential.Engine) (*keystore.KeySet, error) {
		return live.SkipForeign(e.Put(ctx, name, token))
	})
	if err != nil {
		a.logger.Error("storing key set from the admin API failed", zap.String("key_set", name), zap.Error(err))
		if errors.Is(err, keystore.ErrCorrupt) && !errors.As(err, new(*credential.Error)) {
			answer.AdminProblem(w, http.StatusConflict, "Stored key set is corrupt", err.Error(), name)
			return
		}
		writeFailure(w, err)
		return
	}
	if ks == nil {
		answer.AdminProblem(w, http.StatusConflict, "Key set bound to another client",
			fmt.Sprintf("key set %q is bound to a client that no live oauth2_upstream handler uses; remove it from the keystore to seed it anew", name), name)
		return
	}
	a.logger.Info("stored key set from the admin API",
		zap.String("key_set", name), zap.Int64("generation", ks.Generation),
		zap.Bool("has_refresh_token", ks.Token.RefreshToken() != ""))
	answerStatus(ctx, w, handlers[0], name)
}

// refresh makes a grant for key set name now, once per keystore.
func (a *API) refresh(w http.ResponseWriter, r *http.Request, name string) {
	handlers := a.serving(w, name)
	if len(handlers) == 0 {
		return
	}
	ks, err := live.ForceRefresh(r.Context(), name, handlers)
	if err != nil {
		writeFailure(w, err)
		return
	}
	if ks == nil {
		answer.AdminProblem(w, http.StatusNotFound, "Unknown key set", fmt.Sprintf("no keystore of a live oauth2_upstream handler holds key set %q", name), name)
		return
	}
	a.logger.Info("refreshed key set from the admin API", zap.String("key_set", name), zap.Int64("generation", ks.Generation))
	answerStatus(r.Context(), w, handlers[0], name)
}

// answerStatus answers the status of key set name after an operation on it.
func answerStatus(ctx context.Context, w http.ResponseWriter, h *live.Handler, name string) {
	s, err := h.Engine.Status(ctx, name)
	if err != nil {
		s = credential.FailedStatus(name, err)
	}
	answer.JSON(w, http.StatusOK, h.Report(s))
}

// writeFailure answers a refresh or keystore failure as the handler does:
// 502 when a person must act, 503 with Retry-After when it may pass; an
// error of no key set at all is the API's own failure, 500.
func writeFailure(w http.ResponseWriter, err error) {
	if !errors.As(err, new(*credential.Error)) {
		answer.AdminProblem(w, http.StatusInternalServerError, "Key set operation failed", err.Error(), "")
		return
	}
	answer.CredentialFailure(w, err)
}

// readTokenResponse reads a PUT body: a JSON object, a token endpoint
// response, with a non-empty access_token or refresh_token string. Its
// errors never quote the body.
func readTokenResponse(w http.ResponseWriter, r *http.Request) (keystore.Token, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("reading the body (at most %d bytes): %w", maxBody, err)
	}
	var token keystore.Token
	if err := json.Unmarshal(body, &token); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			return nil, fmt.Errorf("the body is not valid JSON (at byte %d)", syntax.Offset)
		}
		return nil, errors.New("the body must be a JSON object: a token endpoint response")
	}
	if token == nil {
		return nil, errors.New("the body must be a JSON object: a token endpoint response")
	}
	for _, field := range []string{keystore.FieldAccessToken, keystore.FieldRefreshToken} {
		if raw, ok := token[field]; ok {
			var s string
			if json.Unmarshal(raw, &s) != nil {
				return nil, fmt.Errorf("%s must be a string", field)
			}
		}
	}
	if token.AccessToken() == "" && token.RefreshToken() == "" {
		return nil, errors.New("the token response holds neither an access_token nor a refresh_token")
	}
	return token, nil
}

// Interface guards
var (
	_ caddy.Provisioner = (*API)(nil)
	_ caddy.AdminRouter = (*API)(nil)
)
