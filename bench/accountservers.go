package bench

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// AccountUpstream is the API behind a sidecar serving many accounts: it
// answers 1 KiB to a request whose bearer token was issued for the account
// its X-Account header names and has not expired, and 401 to any other,
// counting why.
type AccountUpstream struct {
	Addr   string
	server interface{ Close() error }

	OK       atomic.Int64
	Expired  atomic.Int64 // a token of the right account, past its expiry
	Foreign  atomic.Int64 // a token of another account
	Rejected atomic.Int64 // no token, or not one the harness issued
	// MostExpired is the largest lateness of an expired token, in
	// nanoseconds.
	MostExpired atomic.Int64
}

// StartAccountUpstream serves an AccountUpstream on a kernel-chosen
// loopback port.
func StartAccountUpstream() (*AccountUpstream, error) {
	u := &AccountUpstream{}
	srv, addr, err := serve(u)
	if err != nil {
		return nil, err
	}
	u.server, u.Addr = srv, addr
	return u, nil
}

// Close stops the server and its connections.
func (u *AccountUpstream) Close() error { return u.server.Close() }

func (u *AccountUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	name, _, expiry, ok := parseAccessToken(token)
	switch {
	case !ok || len(r.Header["Authorization"]) != 1:
		u.Rejected.Add(1)
	case name != r.Header.Get(accountHeader):
		u.Foreign.Add(1)
	case !now.Before(expiry):
		u.Expired.Add(1)
		storeMax(&u.MostExpired, int64(now.Sub(expiry)))
	default:
		u.OK.Add(1)
		h := w.Header()
		h["Content-Type"] = []string{"application/octet-stream"}
		h["Content-Length"] = []string{strconv.Itoa(getAnswerSize)}
		w.Write(getAnswer)
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	w.WriteHeader(http.StatusUnauthorized)
}

// Bad is the number of requests the upstream refused.
func (u *AccountUpstream) Bad() int64 { return u.Expired.Load() + u.Foreign.Load() + u.Rejected.Load() }

// storeMax raises m to v when v is larger.
func storeMax(m *atomic.Int64, v int64) {
	for {
		cur := m.Load()
		if v <= cur || m.CompareAndSwap(cur, v) {
			return
		}
	}
}

// replicaParam is the extra token request field (the handler's `param`)
// that tells the token endpoint which replica a grant comes from: the
// client, token URL and key sets of the replicas are the same.
const replicaParam = "bench_replica"

// AccountTokenEndpoint is the token endpoint of many accounts, as a
// provider with rate limits runs it: the refresh_token grant rotates each
// account's refresh token (a refresh token spent twice is refused with
// invalid_grant), and while more than RateLimit grants are in flight it
// answers 429 with Retry-After. It records when each grant arrived, and
// the most grants in flight at once, in all and per replica.
type AccountTokenEndpoint struct {
	URL string

	lifetime  time.Duration // of the access tokens it issues
	latency   time.Duration // before each answer
	rateLimit int64
	server    interface{ Close() error }

	inFlight atomic.Int64
	mostSeen atomic.Int64

	mu         sync.Mutex // guards every field below
	generation map[string]int64
	grants     map[string][]time.Time // per account: when each grant arrived
	replicas   map[string]*replicaGrants
	refused    map[string]int

	Throttled atomic.Int64 // grants answered 429
	Refused   atomic.Int64 // invalid_grant or bad requests
}

// replicaGrants counts the grants of one replica in flight.
type replicaGrants struct {
	now, most int64
	total     int64
}

// StartAccountTokenEndpoint serves an AccountTokenEndpoint on a
// kernel-chosen loopback port for accounts names, whose refresh tokens are
// of generation 1. It answers each grant after latency, issuing access
// tokens valid for lifetime, and 429 while more than rateLimit grants are
// in flight.
func StartAccountTokenEndpoint(names []string, lifetime, latency time.Duration, rateLimit int) (*AccountTokenEndpoint, error) {
	te := &AccountTokenEndpoint{
		lifetime: lifetime, latency: latency, rateLimit: int64(rateLimit),
		generation: make(map[string]int64, len(names)), grants: make(map[string][]time.Time),
		replicas: make(map[string]*replicaGrants), refused: make(map[string]int),
	}
	for _, name := range names {
		te.generation[name] = 1
	}
	srv, addr, err := serve(http.HandlerFunc(te.serve))
	if err != nil {
		return nil, err
	}
	te.server, te.URL = srv, "http://"+addr+"/token"
	return te, nil
}

// Close stops the server and its connections.
func (te *AccountTokenEndpoint) Close() error { return te.server.Close() }

func (te *AccountTokenEndpoint) serve(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	n := te.inFlight.Add(1)
	defer te.inFlight.Add(-1)
	storeMax(&te.mostSeen, n)
	r.ParseForm()
	replica := te.enter(r.PostForm.Get(replicaParam))
	defer te.leave(replica)

	if n > te.rateLimit {
		te.Throttled.Add(1)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many requests", http.StatusTooManyRequests)
		return
	}
	if te.latency > 0 {
		timer := time.NewTimer(te.latency)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	name, gen, ok := parseRefreshToken(r.PostForm.Get("refresh_token"))
	if r.PostForm.Get("grant_type") != "refresh_token" || !ok || !te.spend(name, gen, arrived) {
		te.Refused.Add(1)
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant"})
		return
	}
	expiry := time.Now().Add(te.lifetime)
	json.NewEncoder(w).Encode(map[string]any{
		"access_token":  accountAccessToken(name, gen+1, expiry, 0),
		"token_type":    "Bearer",
		"expires_in":    int(te.lifetime / time.Second),
		"refresh_token": accountRefreshToken(name, gen+1),
	})
}

// spend accepts refresh token generation gen of account name when it is the
// current one, and rotates it.
func (te *AccountTokenEndpoint) spend(name string, gen int64, arrived time.Time) bool {
	te.mu.Lock()
	defer te.mu.Unlock()
	cur, known := te.generation[name]
	if !known || gen != cur {
		te.refused[name]++
		return false
	}
	te.generation[name] = gen + 1
	te.grants[name] = append(te.grants[name], arrived)
	return true
}

func (te *AccountTokenEndpoint) enter(replica string) *replicaGrants {
	te.mu.Lock()
	defer te.mu.Unlock()
	g := te.replicas[replica]
	if g == nil {
		g = &replicaGrants{}
		te.replicas[replica] = g
	}
	g.now++
	g.total++
	g.most = max(g.most, g.now)
	return g
}

func (te *AccountTokenEndpoint) leave(g *replicaGrants) {
	te.mu.Lock()
	defer te.mu.Unlock()
	g.now--
}

// GrantLog is what the token endpoint saw.
type GrantLog struct {
	// Arrivals are when each account's grants arrived.
	Arrivals map[string][]time.Time
	// RefusedBy counts the refused grants per account.
	RefusedBy map[string]int
	// MostInFlight is the most grant requests in flight at once, in all
	// and per replica (by the bench_replica field; "" without it).
	MostInFlight        int64
	MostInFlightReplica map[string]int64
	// RequestsReplica counts the token requests of each replica.
	RequestsReplica map[string]int64
	Throttled       int64
	Refused         int64
}

// Log returns a copy of what the token endpoint saw so far.
func (te *AccountTokenEndpoint) Log() GrantLog {
	te.mu.Lock()
	defer te.mu.Unlock()
	l := GrantLog{Arrivals: make(map[string][]time.Time, len(te.grants)),
		RefusedBy: make(map[string]int, len(te.refused)), MostInFlight: te.mostSeen.Load(),
		MostInFlightReplica: map[string]int64{}, RequestsReplica: map[string]int64{},
		Throttled: te.Throttled.Load(), Refused: te.Refused.Load()}
	for name, a := range te.grants {
		l.Arrivals[name] = append([]time.Time(nil), a...)
	}
	for name, n := range te.refused {
		l.RefusedBy[name] = n
	}
	for r, g := range te.replicas {
		l.MostInFlightReplica[r], l.RequestsReplica[r] = g.most, g.total
	}
	return l
}
