// Package credential keeps OAuth2 credentials usable: it loads key sets from
// a keystore, hands out the access token to send, refreshes it once however
// many requests wait (and, through the keystore's lock, once per cluster),
// stores every new key set durably before its refresh token can be spent
// again, and reports what it does to observers. It knows nothing of Caddy:
// the root package adapts it to a Caddy handler, and Transport adapts it to
// an http.RoundTripper for Go programs.
package credential

import (
	"cmp"
	"context"
	"encoding/binary"
	"hash/fnv"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Refresh modes (Config.Mode).
const (
	// ModeProactive refreshes ahead of a known expiry, without holding up
	// requests while the current token is valid, and on a rejection.
	ModeProactive = "proactive"
	// ModeReactive refreshes only when the upstream rejects the token:
	// the classic "wait for the 401".
	ModeReactive = "reactive"
	// ModeAlways makes a grant before every request, as some providers
	// want; requests that arrive during a grant share it.
	ModeAlways = "always"
)

// Defaults of Config.
const (
	DefaultSkew               = 30 * time.Second
	DefaultTokenTimeout       = 10 * time.Second
	DefaultMinRefreshInterval = 10 * time.Second
	DefaultMaxRetryAfter      = 5 * time.Minute
	DefaultKeepalive          = 7 * 24 * time.Hour
	defaultCheckInterval      = 30 * time.Second
)

// Config is what an Engine needs besides its keystore.
type Config struct {
	// Endpoint is where and how grants are made.
	Endpoint TokenEndpoint
	// Mode is ModeProactive (the default), ModeReactive or ModeAlways.
	Mode string
	// Skew is how long before the expiry a proactive refresh starts,
	// at most half the token's lifetime (a key set's Expiry minus its
	// UpdatedAt). Zero refreshes at the expiry itself.
	Skew time.Duration
	// MinRefreshInterval is the youngest a generation may be for its
	// rejection to make a grant: a token granted moments ago that the
	// upstream rejects is not the token's fault (a path that answers 401
	// to everyone, a permission the account lacks), and granting again
	// only spends refresh tokens. Rejected then returns a *TooRecentError.
	// Zero: DefaultMinRefreshInterval; negative: no minimum.
	MinRefreshInterval time.Duration
	// MaxRetryAfter caps how long a token endpoint's Retry-After holds
	// back grants. Zero or negative: DefaultMaxRetryAfter.
	MaxRetryAfter time.Duration
	// MaxConcurrentGrants bounds the token requests the engine has in
	// flight at once; the others wait their turn. Zero:
	// DefaultMaxConcurrentGrants; negative: no bound.
	MaxConcurrentGrants int
	// SeedName names the key set that SeedToken (a refresh token) seeds
	// when the keystore has no key set of that name.
	SeedName  string
	SeedToken string
	// BindUnbound names the one key set whose stored document may name no
	// client (keystore.KeySet.Client nil: written by hand, or before key
	// sets were bound): the engine takes it up as its own and binds it
	// with its next write. Every other unbound document is refused with a
	// permanent *Error of code CodeKeySetUnbound, since nothing in it says
	// whose tokens it holds. It is a one-time migration switch for an
	// engine that serves one fixed key set: one that selects key sets per
	// request must leave it empty, or the first client to ask would take
	// up, and bind, a document of any name. Default: none.
	BindUnbound string
	// MaxWait bounds how long a request waits for a refresh another
	// request started; zero: only the request's context bounds it.
	MaxWait time.Duration
	// Header renders an access token as the value of the header that
	// carries it. Default: "Bearer <token>".
	Header func(accessToken string) string
	// Logger receives the engine's logs, which hold no token value.
	// Default: none.
	Logger *zap.Logger
	// Observer learns of grants, stored key sets and keystore failures.
	Observer Observer
	// Now is the engine's clock. Default: time.Now.
	Now func() time.Time
	// Unstored is shared by the engines over one keystore in one process,
	// so that a granted key set the keystore has not accepted outlives the
	// engine that granted it (see Unstored). Default: the engine's own.
	Unstored *Unstored
	// Keepalive refreshes a key set whose stored generation is older than
	// this, whether or not requests need it: a refresh token that is never
	// used dies (Microsoft's after 90 days of inactivity, Google's after
	// six months). Zero: DefaultKeepalive; negative: never.
	Keepalive time.Duration
	// Serves names the stored key sets the engine keeps alive: with it the
	// keystore is listed (when it is a keystore.Lister) and every name it
	// accepts is kept alive, loaded or not; without it, the key sets the
	// engine has loaded.
	Serves func(name string) bool
	// CheckInterval is how often the engine looks at every key set it
	// has: to note the state changes that time alone makes (a token
	// nearing its expiry), to store what waits in Unstored, and for the
	// keepalive. Zero: 30 seconds.
	CheckInterval time.Duration
	// ReauthorizeWarning is how long before its refresh token's announced
	// expiry a key set that no refresh will save is flagged
	// (Status.RefreshExpiring) and announced to the observer, once per
	// generation (refreshexpiry.go). Zero: DefaultReauthorizeWarning;
	// negative: never.
	ReauthorizeWarning time.Duration
}

// Credential is a key set ready for requests: the document, and what every
// request reads from it, worked out once (the access token is raw JSON in
// the document; decoding it per request cost 6 allocations per GET in the
// root package's BenchmarkMiddleware, and 1-3.6 % of Caddy's CPU).
type Credential struct {
	// KeySet is the key set document. It must not be modified.
	KeySet *keystore.KeySet
	// Header is the value of the header that carries the access token.
	Header string

	hasAccessToken bool    // KeySet.Token.AccessToken() != ""
	spread         float64 // in [0.5, 1): where in the skew its proactive refresh starts
}

// minTokenLife is the least life a token must have left to be sent, the
// sending floor: one closer to its expiry would die on its way to the
// upstream, or while the upstream works on the request, so it counts as
// expired and is replaced first. A token endpoint that announces a
// lifetime no longer than the floor (expires_in 1, or 0.5) would make
// every token it grants unusable on arrival, and so a grant per request,
// each spending (and, with rotation, replacing) the refresh token: such a
// lifetime is taken as unknown instead (expiryOf, belowSendingFloor).
const minTokenLife = time.Second

// usable reports whether the credential's access token can be sent at now.
func (c *Credential) usable(now time.Time) bool { return !c.expiring(now, minTokenLife) }

// expiring is KeySet.Expiring(now, skew) without decoding the token.
func (c *Credential) expiring(now time.Time, skew time.Duration) bool {
	return !c.hasAccessToken || c.KeySet.ExpiresWithin(now, skew)
}

// proactiveSkew is how long before its expiry the credential is refreshed
// proactively: skew, but at most half the token's announced lifetime (its
// expiry minus when it was granted), so that a token that lives shorter
// than the skew is used for half its life rather than refreshed by every
// request; then a point between all and half of that, fixed per key set
// generation (spread), so that key sets whose tokens expire together do
// not all refresh in the same instant. An unknown lifetime leaves skew as
// it is before the spread.
func (c *Credential) proactiveSkew(skew time.Duration) time.Duration {
	ks := c.KeySet
	if lifetime := ks.Expiry.Sub(ks.UpdatedAt); !ks.Expiry.IsZero() && !ks.UpdatedAt.IsZero() && lifetime > 0 {
		skew = min(skew, lifetime/2)
	}
	return time.Duration(float64(skew) * c.spread)
}

// spreadOf places key set generation ks within the skew: a value in
// [0.5, 1) drawn from its name and generation, the same in every replica.
func spreadOf(ks *keystore.KeySet) float64 {
	h := fnv.New64a()
	h.Write([]byte(ks.Name))
	binary.Write(h, binary.BigEndian, ks.Generation)
	return 0.5 + float64(h.Sum64()>>11)/(1<<53)/2
}

// Engine keeps the tokens of every key set it is asked for: it loads them
// from the keystore, makes at most one grant at a time per key set (and,
// through the keystore's lock, per cluster), and stores each new key set
// before anything uses it.
type Engine struct {
	store       keystore.Store
	client      *tokenClient
	mode        string
	skew        time.Duration
	seedName    string
	seedToken   string
	bindUnbound string // the one key set whose unbound document is taken up
	headerFor   func(accessToken string) string
	maxWait     time.Duration
	// minRefreshInterval: a rejection of a younger generation makes no
	// grant; negative: no minimum.
	minRefreshInterval time.Duration
	maxRetryAfter      time.Duration
	grantSlots         *grantSlots // bounds the token requests in flight
	// jitter spreads a backoff so that replicas that failed together do
	// not retry together; nil keeps backoffs exact (tests).
	jitter     func(time.Duration) time.Duration
	now        func() time.Time
	logger     *zap.Logger
	observer   Observer
	unstored   *Unstored
	keepalive  time.Duration // negative: no keepalive
	serves     func(name string) bool
	flightsRun sync.WaitGroup // flights still running, waited for by Close

	checkInterval time.Duration
	closeSaveTime time.Duration      // how long Close retries storing what waits in unstored
	stopWatch     context.CancelFunc // ends watch; Close calls it
	watching      sync.WaitGroup     // the watch goroutine, waited for by Close

	reauthorizeWarning time.Duration // negative: no warning
	refreshWarned      refreshWarnings

	mu     sync.Mutex // guards states
	states map[string]*keySetState
}

// New returns an Engine over store. It checks its key sets in the
// background (Config.CheckInterval) until Close.
func New(store keystore.Store, cfg Config) *Engine {
	endpoint := cfg.Endpoint
	if endpoint.Grant == "" {
		endpoint.Grant = GrantRefreshToken
	}
	if endpoint.Timeout <= 0 {
		endpoint.Timeout = DefaultTokenTimeout
	}
	if endpoint.Transport == nil {
		endpoint.Transport = http.DefaultTransport
	}
	e := &Engine{
		store:       store,
		client:      &tokenClient{TokenEndpoint: endpoint, now: time.Now},
		mode:        cfg.Mode,
		skew:        cfg.Skew,
		seedName:    cfg.SeedName,
		seedToken:   cfg.SeedToken,
		bindUnbound: cfg.BindUnbound,
		headerFor:   cfg.Header,
		maxWait:     cfg.MaxWait,
		// Zero means the default, as elsewhere in Config; no minimum is
		// asked for with a negative interval.
		minRefreshInterval: cmp.Or(cfg.MinRefreshInterval, DefaultMinRefreshInterval),
		maxRetryAfter:      cfg.MaxRetryAfter,
		grantSlots:         newGrantSlots(cfg.MaxConcurrentGrants),
		jitter:             equalJitter,
		now:                time.Now,
		logger:             cfg.Logger,
		observer:           cfg.Observer,
		unstored:           cfg.Unstored,
		keepalive:          cmp.Or(cfg.Keepalive, DefaultKeepalive),
		serves:             cfg.Serves,
		reauthorizeWarning: cmp.Or(cfg.ReauthorizeWarning, DefaultReauthorizeWarning),
		checkInterval:      cmp.Or(cfg.CheckInterval, defaultCheckInterval),
		closeSaveTime:      closeSaveTime,
		states:             make(map[string]*keySetState),
	}
	if e.unstored == nil {
		e.unstored = NewUnstored()
	}
	if e.mode == "" {
		e.mode = ModeProactive
	}
	if e.maxRetryAfter <= 0 {
		e.maxRetryAfter = DefaultMaxRetryAfter
	}
	if e.headerFor == nil {
		e.headerFor = func(accessToken string) string { return "Bearer " + accessToken }
	}
	if e.logger == nil {
		e.logger = zap.NewNop()
	}
	if e.observer == nil {
		e.observer = Observers(nil)
	}
	if cfg.Now != nil {
		e.now, e.client.now = cfg.Now, cfg.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.stopWatch = cancel
	e.watching.Add(1)
	go e.watch(ctx)
	return e
}

// Store returns the engine's keystore.
func (e *Engine) Store() keystore.Store { return e.store }

// Current returns the credential to send for key set name now, refreshing
// first when the mode or the token's expiry demands it. A request that the
// token in use can still serve is never failed because a refresh failed or
// is held back: it gets that token (DESIGN.md invariant 10). A key set
// granted but not yet stored is such a token: it is served from memory, and
// each request that finds it unsaved starts the save again in the
// background, so that it is stored as soon as the keystore takes it.
func (e *Engine) Current(ctx context.Context, name string) (*Credential, error) {
	st, err := e.state(ctx, name)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	if st.unsaved && st.flight == nil {
		e.startFlightLocked(st, name, st.cred.KeySet.Generation, causeUnstored)
	}
	if due, soon := e.refreshNeed(st.cred, e.now()); !due && !soon {
		cred := st.cred
		st.mu.Unlock()
		return cred, nil
	}
	// A grant is due or near, unless a recorded failure stands in for it:
	// its urgent backoff when the token in use cannot serve. Checking that
	// may release st.mu to read the keystore, so what follows looks at the
	// key set in use afterwards.
	blocked := e.blockedLocked(ctx, st, name, !st.cred.usable(e.now()))
	now, cred := e.now(), st.cred
	due, soon := e.refreshNeed(cred, now)
	switch {
	case !due:
		// Still valid: refresh in the background and keep serving it.
		if soon && blocked == nil && st.flight == nil {
			e.startFlightLocked(st, name, cred.KeySet.Generation, causeExpiring)
		}
		st.mu.Unlock()
		return cred, nil
	case blocked != nil:
		st.mu.Unlock()
		if cred.usable(now) {
			return cred, nil // always mode: the token in use still serves
		}
		// Another replica may have stored a successor since this one failed.
		if stored := e.adoptStored(ctx, st, name, cred.KeySet.Generation); stored != nil {
			return stored, nil
		}
		return nil, blocked
	}
	cause := causeExpired
	if e.mode == ModeAlways {
		cause = causeAlways
	}
	f := e.flightLocked(st, name, cred.KeySet.Generation, cause)
	st.mu.Unlock()
	fresh, err := e.wait(ctx, f, name)
	if err != nil && cred.usable(e.now()) {
		return cred, nil // always mode: the token in use still serves
	}
	return fresh, err
}

// refreshNeed says what cred needs at now: a grant that is due (the mode
// wants one before every request, or the token is expired or missing), or
// one that is soon (a proactive refresh, run in the background).
func (e *Engine) refreshNeed(cred *Credential, now time.Time) (due, soon bool) {
	due = e.mode == ModeAlways || !cred.usable(now)
	soon = e.mode == ModeProactive && cred.expiring(now, cred.proactiveSkew(e.skew))
	return due, soon
}

// Close stops the engine's background checks and waits for refreshes in
// flight: a grant that succeeded must be stored, whatever happens to the
// caller, or a rotated refresh token is lost. A granted key set that the
// keystore still refuses is retried for a few seconds; what remains waits
// in the engine's Unstored for another engine over the same keystore.
// Calling it again does nothing more.
func (e *Engine) Close() {
	e.stopWatch()
	e.watching.Wait()
	e.flightsRun.Wait()
	e.closeUnstored()
}

func (e *Engine) credentialFor(ks *keystore.KeySet) *Credential {
	accessToken := ks.Token.AccessToken()
	return &Credential{KeySet: ks, Header: e.headerFor(accessToken), hasAccessToken: accessToken != "", spread: spreadOf(ks)}
}

// newer reports whether candidate supersedes the key set of generation
// have. Generations only grow, so every decision to adopt a key set (from a
// flight, the keystore, an operator) is this comparison.
func newer(candidate *keystore.KeySet, have int64) bool {
	return candidate != nil && candidate.Generation > have
}

// equalJitter returns a duration in [d/2, d): half the backoff is kept, the
// other half is random, so replicas that failed together spread out.
func equalJitter(d time.Duration) time.Duration {
	if d < 2 {
		return d
	}
	return d/2 + rand.N(d/2)
}
