package oauth2upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

const (
	// adminPrefix is where the routes live on Caddy's admin endpoint.
	adminPrefix = "/oauth2_upstream/"
	// maxAdminBody caps a PUT body: a token response is a few KiB.
	maxAdminBody = 1 << 20
	// adminTimeout bounds one admin request's keystore work and grant.
	adminTimeout = 2 * time.Minute
	// defaultListLimit and maxListLimit bound a page of the key set list.
	defaultListLimit = 100
	maxListLimit     = 1000
)

// AdminAPI is the admin endpoint's /oauth2_upstream/ routes: the key sets of
// every live oauth2_upstream handler, their status, seeding or replacing one
// from a token response, and forcing a refresh. Its answers never hold a
// token value.
//
//	GET  /oauth2_upstream/key_sets?limit=&after=   the known key sets' status, a page at a time
//	GET  /oauth2_upstream/key_sets/<name>          one key set's status
//	PUT  /oauth2_upstream/key_sets/<name>          store a token response as its next generation
//	POST /oauth2_upstream/key_sets/<name>/refresh  make a grant now
type AdminAPI struct {
	logger *zap.Logger
	// handlers returns the handlers the API acts on; tests narrow it to
	// their own.
	handlers func() []*Handler
}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.oauth2_upstream",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Provision sets up the API's logger.
func (a *AdminAPI) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger(a)
	return nil
}

// Routes returns the API's one route, under which a ServeMux dispatches on
// method and path.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	mux := http.NewServeMux()
	keySets := adminPrefix + "key_sets"
	one := keySets + "/{name}"
	mux.HandleFunc("GET "+keySets, a.list)
	mux.HandleFunc("GET "+keySets+"/{$}", a.list)
	mux.HandleFunc("GET "+one, a.withName(a.get))
	mux.HandleFunc("PUT "+one, a.withName(a.put))
	mux.HandleFunc("POST "+one+"/refresh", a.withName(a.refresh))
	// The same paths without a method answer 405 as a problem document; a
	// path with a method is the more specific pattern, so it wins.
	mux.HandleFunc(keySets, methodNotAllowed(http.MethodGet))
	mux.HandleFunc(one, methodNotAllowed(http.MethodGet, http.MethodPut))
	mux.HandleFunc(one+"/refresh", methodNotAllowed(http.MethodPost))
	mux.HandleFunc(adminPrefix, func(w http.ResponseWriter, r *http.Request) {
		adminProblem(w, http.StatusNotFound, "Not found", fmt.Sprintf("no such resource %q", r.URL.Path), "")
	})
	serve := func(w http.ResponseWriter, r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
		defer cancel()
		mux.ServeHTTP(w, r.WithContext(ctx))
		return nil
	}
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(serve)}}
}

// withName checks the {name} of the path before h acts on it.
func (a *AdminAPI) withName(h func(ctx context.Context, w http.ResponseWriter, r *http.Request, name string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if err := keystore.ValidateName(name); err != nil {
			adminProblem(w, http.StatusBadRequest, "Invalid key set name", err.Error(), "")
			return
		}
		h(r.Context(), w, r, name)
	}
}

// methodNotAllowed answers 405 naming the allowed methods.
func methodNotAllowed(allowed ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		adminProblem(w, http.StatusMethodNotAllowed, "Method not allowed",
			fmt.Sprintf("%s is not allowed here; use %s", r.Method, strings.Join(allowed, " or ")), "")
	}
}

// list answers the status of the known key sets, a page at a time, by
// name: at most limit (default 100, at most 1000) whose names sort after
// after. When more follow, a Link header (RFC 8288) names the next page.
func (a *AdminAPI) list(w http.ResponseWriter, r *http.Request) {
	after, limit, err := listPage(r.URL.Query())
	if err != nil {
		adminProblem(w, http.StatusBadRequest, "Bad page", err.Error(), "")
		return
	}
	var all []credential.Status
	for _, h := range a.live() {
		// limit+1 from each: the one past the page says whether one follows.
		all = append(all, h.handlerStatuses(r.Context(), after, limit+1)...)
	}
	page := credential.MergeStatuses(all)
	if len(page) > limit {
		page = page[:limit]
		next := url.Values{"after": {page[limit-1].Name}, "limit": {strconv.Itoa(limit)}}
		w.Header().Set("Link", "<"+adminPrefix+"key_sets?"+next.Encode()+">; rel=\"next\"")
	}
	writeJSON(w, http.StatusOK, page)
}

// listPage reads the list's limit and after parameters.
func listPage(q url.Values) (after string, limit int, err error) {
	limit = defaultListLimit
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxListLimit {
			return "", 0, fmt.Errorf("limit %q: want a whole number from 1 to %d", v, maxListLimit)
		}
	}
	after = q.Get("after")
	if after != "" {
		if err := keystore.ValidateName(after); err != nil {
			return "", 0, fmt.Errorf("after: %w", err)
		}
	}
	return after, limit, nil
}

// log returns the API's logger; an API nobody provisioned logs nowhere.
func (a *AdminAPI) log() *zap.Logger {
	if a.logger == nil {
		return zap.NewNop()
	}
	return a.logger
}

func (a *AdminAPI) live() []*Handler {
	if a.handlers != nil {
		return a.handlers()
	}
	return registeredHandlers()
}

// serving returns the live handlers that can use key set name.
func (a *AdminAPI) serving(name string) []*Handler {
	var out []*Handler
	for _, h := range a.live() {
		if h.serves(name) {
			out = append(out, h)
		}
	}
	return out
}

// get answers the status of key set name. A handler configured with that
// name shows it even when it cannot be loaded (with the reason); one with a
// placeholder key_set only shows it when it exists.
func (a *AdminAPI) get(ctx context.Context, w http.ResponseWriter, _ *http.Request, name string) error {
	var found []credential.Status
	for _, h := range a.serving(name) {
		s, err := h.engine.Status(ctx, name)
		switch {
		case err == nil:
			found = append(found, s)
		case h.keySetIsTemplate && errors.Is(err, keystore.ErrNotFound):
		default:
			found = append(found, credential.FailedStatus(name, err))
		}
	}
	if len(found) == 0 {
		return adminProblem(w, http.StatusNotFound, "Unknown key set", fmt.Sprintf("no live oauth2_upstream handler has key set %q", name), name)
	}
	return writeJSON(w, http.StatusOK, credential.MergeStatuses(found)[0])
}

// put stores the token response in the body as the next generation of key
// set name, through every keystore that a handler serving name uses, and
// takes it into use at once.
func (a *AdminAPI) put(ctx context.Context, w http.ResponseWriter, r *http.Request, name string) error {
	token, err := readTokenResponse(w, r)
	if err != nil {
		status := http.StatusBadRequest
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		return adminProblem(w, status, "Invalid token response", err.Error(), name)
	}
	handlers := a.serving(name)
	if len(handlers) == 0 {
		return adminProblem(w, http.StatusNotFound, "Unknown key set", fmt.Sprintf("no live oauth2_upstream handler can use key set %q", name), name)
	}
	ks, err := oncePerKeystore(ctx, name, handlers, func(e *credential.Engine) (*keystore.KeySet, error) {
		return skipForeign(e.Put(ctx, name, token))
	})
	if err != nil {
		a.log().Error("storing key set from the admin API failed", zap.String("key_set", name), zap.Error(err))
		if errors.Is(err, keystore.ErrCorrupt) && !errors.As(err, new(*credential.Error)) {
			return adminProblem(w, http.StatusConflict, "Stored key set is corrupt", err.Error(), name)
		}
		return writeAdminRefreshProblem(w, err)
	}
	if ks == nil {
		return adminProblem(w, http.StatusConflict, "Key set bound to another client",
			fmt.Sprintf("key set %q is bound to a client that no live oauth2_upstream handler uses; remove it from the keystore to seed it anew", name), name)
	}
	a.log().Info("stored key set from the admin API",
		zap.String("key_set", name), zap.Int64("generation", ks.Generation),
		zap.Bool("has_refresh_token", ks.Token.RefreshToken() != ""))
	return a.answerStatus(ctx, w, handlers[0], name)
}

// refresh makes a grant for key set name now, once per keystore.
func (a *AdminAPI) refresh(ctx context.Context, w http.ResponseWriter, _ *http.Request, name string) error {
	handlers := a.serving(name)
	if len(handlers) == 0 {
		return adminProblem(w, http.StatusNotFound, "Unknown key set", fmt.Sprintf("no live oauth2_upstream handler can use key set %q", name), name)
	}
	ks, err := oncePerKeystore(ctx, name, handlers, func(e *credential.Engine) (*keystore.KeySet, error) {
		ks, err := e.ForceRefresh(ctx, name)
		if errors.Is(err, keystore.ErrNotFound) {
			return nil, nil // a keystore without it: nothing to refresh there
		}
		return skipForeign(ks, err)
	})
	if err != nil {
		return writeAdminRefreshProblem(w, err)
	}
	if ks == nil {
		return adminProblem(w, http.StatusNotFound, "Unknown key set", fmt.Sprintf("no keystore of a live oauth2_upstream handler holds key set %q", name), name)
	}
	a.log().Info("refreshed key set from the admin API", zap.String("key_set", name), zap.Int64("generation", ks.Generation))
	return a.answerStatus(ctx, w, handlers[0], name)
}

func (a *AdminAPI) answerStatus(ctx context.Context, w http.ResponseWriter, h *Handler, name string) error {
	s, err := h.engine.Status(ctx, name)
	if err != nil {
		s = credential.FailedStatus(name, err)
	}
	return writeJSON(w, http.StatusOK, s)
}

// oncePerKeystore runs write (a Put or a grant) once per keystore among the
// handlers, and makes every other handler take the result into use.
// Handlers sharing a keystore module instance share its result; a handler
// with its own instance of the same storage (two sites configured with the
// same directory) finds the written document there and adopts it too; only
// a keystore that holds something else is written on its own. write may
// return no key set and no error to skip a keystore; the result is the
// first key set written, nil if none was.
func oncePerKeystore(ctx context.Context, name string, handlers []*Handler, write func(*credential.Engine) (*keystore.KeySet, error)) (*keystore.KeySet, error) {
	written := make(map[keystore.Store]*keystore.KeySet) // store instances are pointers
	var first *keystore.KeySet
	for _, h := range handlers {
		if ks, ok := written[h.engine.Store()]; ok {
			h.engine.Adopt(name, ks)
			continue
		}
		if first != nil {
			if stored, err := h.engine.Store().Load(ctx, name); err == nil &&
				stored.Generation == first.Generation && stored.UpdatedAt.Equal(first.UpdatedAt) {
				written[h.engine.Store()] = stored
				h.engine.Adopt(name, stored)
				continue
			}
		}
		ks, err := write(h.engine)
		if err != nil {
			return nil, err
		}
		if ks == nil {
			continue
		}
		written[h.engine.Store()] = ks
		if first == nil {
			first = ks
		}
	}
	return first, nil
}

// skipForeign makes an engine's refusal of a key set bound to another client
// a skip: another live handler, of that client, may own it.
func skipForeign(ks *keystore.KeySet, err error) (*keystore.KeySet, error) {
	var ce *credential.Error
	if errors.As(err, &ce) && ce.Code == credential.CodeKeySetForeign {
		return nil, nil
	}
	return ks, err
}

// readTokenResponse reads a PUT body: a JSON object, a token endpoint
// response, with a non-empty access_token or refresh_token string. Its
// errors never quote the body.
func readTokenResponse(w http.ResponseWriter, r *http.Request) (keystore.Token, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		return nil, fmt.Errorf("reading the body (at most %d bytes): %w", maxAdminBody, err)
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

// writeAdminRefreshProblem answers a refresh or keystore failure as the
// handler does: 502 when a person must act, 503 with Retry-After when it
// may pass.
func writeAdminRefreshProblem(w http.ResponseWriter, err error) error {
	var re *credential.Error
	if !errors.As(err, &re) {
		return adminProblem(w, http.StatusInternalServerError, "Key set operation failed", err.Error(), "")
	}
	return writeProblem(w, err)
}

// Interface guards
var (
	_ caddy.Provisioner = (*AdminAPI)(nil)
	_ caddy.AdminRouter = (*AdminAPI)(nil)
)
