package oauth2upstream

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
)

// ServeHTTP sends the request on with the key set's token, and when the
// upstream answers a trigger status, refreshes and replays it once.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method == http.MethodTrace && !h.AllowTrace {
		return refuseTrace(w)
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	name := h.KeySet
	if h.keySets.PerRequest() {
		name = repl.ReplaceAll(h.KeySet, "")
		if err := h.keySets.Admit(name); err != nil {
			return answer.CredentialFailure(w, err)
		}
	}
	cred, err := h.engine.Current(r.Context(), name)
	if err != nil {
		return answer.CredentialFailure(w, err)
	}
	x := &requestState{vars: requestPlaceholders{keySet: name, cred: cred, extras: h.extras}}
	repl.Map(x.vars.lookup)

	body := newReplayBody(r, h.ReplayMemory, h.MaxReplayBody, h.ownedHeaders)
	if body != nil {
		defer body.release()
		body.idleTimeout(w, r, time.Duration(h.BodyTimeout))
		r.Body = body
	}
	// The held answer's headers (WWW-Authenticate, ...) go into the real
	// writer's map: a replay starts again from this copy.
	before := w.Header().Clone()
	// Set, not Add: whatever the client sent in this header is replaced.
	r.Header.Set(h.HeaderName, cred.Header)
	// A DPoP proof is the sidecar's too (proving adds its own): the
	// client's never goes upstream, with DPoP configured or not.
	r.Header.Del(dpopHeader)
	dropConnectCookies(r.Header)
	if body != nil {
		zeroCopy := h.zeroCopyFor()
		if h.setUpstreamExpect(r, zeroCopy) && zeroCopy {
			r = body.streamAfterContinue(r)
		}
	}

	attempt := &x.attempt
	attempt.reset(w, h.RefreshOn, h.RefreshOnInvalidToken)
	defer attempt.free()
	if h.DPoP != nil {
		next, attempt.dpopNonce = h.proving(next, x), true
	}
	err = next.ServeHTTP(attempt, r)
	if attempt.tooLarge {
		h.ops.countReplay(name, replayNotReplayable)
		h.logger.Debug("not replaying: the trigger answer's body is larger than is held",
			zap.String("key_set", name), zap.Int("max_held_body", maxHeldBody))
	}
	if err != nil || !attempt.held {
		return err
	}

	return h.answerRejection(w, r, next, x, body, before)
}

// connectCookiePrefix starts the name of every cookie of the connect page
// (connect/csrf.go), with or without the __Host- prefix.
const connectCookiePrefix = "oauth2_upstream_"

// dropConnectCookies removes the connect page's cookies from a request's
// Cookie headers. Cookies are not scoped by port (RFC 6265 section 8.5),
// so an operator's browser that opened the connect page on this host sends
// its CSRF and flow cookies to the proxy's port too: they are the
// sidecar's, not the upstream's.
func dropConnectCookies(h http.Header) {
	values := h["Cookie"]
	if !slices.ContainsFunc(values, func(v string) bool { return strings.Contains(v, connectCookiePrefix) }) {
		return // the common case: one scan, no allocation
	}
	var kept []string
	for _, v := range values {
		for _, c := range strings.Split(v, ";") {
			name, _, _ := strings.Cut(strings.TrimSpace(c), "=")
			if !strings.HasPrefix(strings.TrimPrefix(name, "__Host-"), connectCookiePrefix) && strings.TrimSpace(c) != "" {
				kept = append(kept, strings.TrimSpace(c))
			}
		}
	}
	if len(kept) == 0 {
		h.Del("Cookie")
		return
	}
	h["Cookie"] = []string{strings.Join(kept, "; ")}
}

// refuseTrace answers TRACE with 405: the upstream would echo the request,
// the injected credential included, back to the client (RFC 9110 section
// 9.3.8 warns of exactly this).
func refuseTrace(w http.ResponseWriter) error {
	w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
	return answer.JSONAs(w, http.StatusMethodNotAllowed, "application/problem+json", answer.Problem{
		Type: answer.ProblemType, Title: "TRACE not allowed", Status: http.StatusMethodNotAllowed,
		Detail: "TRACE would echo the injected credential back to the client; the oauth2_upstream handler refuses it unless allow_trace is set",
	})
}

// answerRejection follows a held trigger answer: it gets a newer credential
// (the current one if another request already refreshed) and replays the
// request once with it, or sends the held answer on when no refresh is due
// or the body cannot be replayed, or a problem when the refresh failed.
func (h *Handler) answerRejection(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, x *requestState, body *replayBody, before http.Header) error {
	attempt := &x.attempt
	if h.DPoP != nil && asksDPoPNonce(w.Header()) {
		if x.nonceRetried {
			return attempt.sendHeld() // a nonce again: no grant would help
		}
		return h.retryWithNonce(w, r, next, x, body, before, true)
	}
	name, cred := x.vars.keySet, x.vars.cred
	fresh, err := h.engine.Rejected(r.Context(), name, cred.KeySet.Generation)
	var tooRecent *credential.TooRecentError
	if errors.As(err, &tooRecent) {
		// The token was granted moments ago: a new one would not cure
		// this rejection, and no refresh token is spent on it.
		h.ops.countReplay(name, replayTooRecent)
		h.logger.Debug("not refreshing: the rejected token is younger than min_refresh_interval",
			zap.String("key_set", name), zap.Int("rejected_status", attempt.status),
			zap.Int64("rejected_generation", tooRecent.Generation), zap.Duration("age", tooRecent.Age))
		return attempt.sendHeld()
	}
	if err != nil {
		h.ops.countReplay(name, replayRefreshFailed)
		restoreHeader(w.Header(), before)
		return answer.CredentialFailure(w, err)
	}
	if body != nil {
		replay, err := body.rewind()
		if err != nil {
			h.ops.countReplay(name, replayNotReplayable)
			h.noteUnkeptBody(name, err)
			h.logger.Debug("not replaying", zap.String("key_set", name), zap.String("reason", err.Error()))
			return attempt.sendHeld()
		}
		r.Body = replay
	}
	restoreHeader(w.Header(), before)
	x.vars.cred = fresh
	r.Header.Set(h.HeaderName, fresh.Header)
	h.logger.Debug("replaying request with refreshed token",
		zap.String("key_set", name),
		zap.Int("rejected_status", attempt.status),
		zap.Int64("rejected_generation", cred.KeySet.Generation),
		zap.Int64("generation", fresh.KeySet.Generation))
	h.ops.countReplay(name, replayReplayed)
	attempt.free()
	attempt.reset(w, nil, false)
	attempt.dpopNonce = h.DPoP != nil && !x.nonceRetried
	if err := next.ServeHTTP(attempt, r); err != nil || !attempt.held {
		return err
	}
	return h.retryWithNonce(w, r, next, x, body, before, false)
}

// requestState is what ServeHTTP keeps for one request, in one allocation: the
// first attempt's writer and the placeholders (BenchmarkMiddleware: one
// allocation fewer per request than two separate ones).
type requestState struct {
	attempt      attemptWriter
	vars         requestPlaceholders
	nonceRetried bool // the request was sent again with a DPoP nonce
}

// restoreHeader makes h what it was when saved was cloned from it.
func restoreHeader(h, saved http.Header) {
	clear(h)
	for k, v := range saved {
		h[k] = v
	}
}

// proving wraps next so that every attempt of the request x (the first,
// a nonce retry, a replay after a refresh) goes upstream with a proof of
// its own (RFC 9449 section 7: the jti is never reused, the ath is of the
// token sent), and the server's DPoP-Nonce, if it sent one, is kept.
func (h *Handler) proving(next caddyhttp.Handler, x *requestState) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		target := h.DPoP.Resource
		if strings.Contains(target, "{") {
			target = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).ReplaceAll(target, "")
		}
		target = strings.TrimSuffix(target, "/") + r.URL.EscapedPath()
		proof, err := h.engine.Proof(x.vars.cred, r.Method, target)
		if err != nil {
			return answer.CredentialFailure(w, err)
		}
		r.Header.Set(dpopHeader, proof) // whatever the client sent is replaced
		err = next.ServeHTTP(w, r)
		h.engine.NoteNonce(target, w.Header().Get("DPoP-Nonce"))
		return err
	})
}

// retryWithNonce sends the request once more after a resource server's
// use_dpop_nonce 401, with the same token (no grant: it was not rejected)
// and a proof carrying the nonce; once per request. With triggers (the
// nonce was asked of the first attempt) a rejection of the retry is
// answered as the first attempt's would be; without (it was asked of the
// replay after a refresh) the retry's answer goes to the client.
func (h *Handler) retryWithNonce(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, x *requestState, body *replayBody, before http.Header, triggers bool) error {
	x.nonceRetried = true
	attempt := &x.attempt
	if body != nil {
		replay, err := body.rewind()
		if err != nil {
			h.ops.countReplay(x.vars.keySet, replayNotReplayable)
			h.noteUnkeptBody(x.vars.keySet, err)
			return attempt.sendHeld()
		}
		r.Body = replay
	}
	restoreHeader(w.Header(), before)
	attempt.free()
	if !triggers {
		attempt.reset(w, nil, false)
		return next.ServeHTTP(attempt, r)
	}
	attempt.reset(w, h.RefreshOn, h.RefreshOnInvalidToken)
	if err := next.ServeHTTP(attempt, r); err != nil || !attempt.held {
		return err
	}
	return h.answerRejection(w, r, next, x, body, before)
}
