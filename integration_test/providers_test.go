package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/resourceserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/provider"
)

// catalogTokenLifespan is the catalog scenarios' access token lifespan,
// announced as expires_in 3 (fosite rounds down): a proactive sidecar
// refreshes 2s after a grant (never with less than a second left), which
// leaves the replay step more than a second before the next refresh.
const catalogTokenLifespan = 4 * time.Second

// catalogPollGap paces the requests that wait for a refresh.
const catalogPollGap = 50 * time.Millisecond

// catalogSecret is every catalog client's secret, long enough (32 bytes
// and more) for client_secret_jwt.
const catalogSecret = "catalog-client-secret-0123456789abcdef"

// documentedGracePeriods are the rotation grace periods that catalog
// entries state in words only (refresh.token_lifetime, notes), each from
// the entry's own source: those entries run against the grace-period
// server. A name here that is no catalog entry fails the test.
var documentedGracePeriods = map[string]time.Duration{
	// https://developer.okta.com/docs/guides/refresh-tokens/main/: 0 to
	// 60 seconds, 30 by default.
	"okta": 30 * time.Second,
	// https://community.xero.com/developer/discussion/105714701/
	"xero": 30 * time.Minute,
}

// catalogCase is what one catalog entry asks of the local servers.
type catalogCase struct {
	entry *provider.Entry
	// args are the provider line's key=value parameters: every path
	// segment parameter (a tenant, a realm) gets a value of the test's, the
	// other required ones their examples.
	args    []string
	profile authserver.Profile
	client  authserver.Client
	// seedScopes are the scopes of the user's consent: the entry's.
	seedScopes []string
}

// Every entry of the provider catalog, named by `provider <name>` with
// token_url pointed at the local fosite server (an explicit option wins
// over the entry), drives the real binary through a grant, a refresh when
// its token expires and a replay after a 401, against a server shaped by
// the entry's quirks: its client authentication, scopes, token URL path
// (tenant included), rotation (with the grace period an entry documents),
// expires_in, extra fields and header scheme. The handler sends the
// entry's scopes with every refresh, so the server requires them there
// unless the entry says they are optional (Microsoft). A new entry is
// covered as soon as it is in the catalog.
func TestProviderCatalog(t *testing.T) {
	catalog, err := provider.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range slices.Sorted(maps.Keys(documentedGracePeriods)) {
		if _, err := catalog.Lookup(name); err != nil {
			t.Errorf("documentedGracePeriods: %v", err)
		}
	}
	for _, entry := range catalog.Entries() {
		t.Run(entry.Name, func(t *testing.T) {
			t.Parallel()
			testCatalogEntry(t, newCatalogCase(t, entry))
		})
	}
}

func newCatalogCase(t *testing.T, entry *provider.Entry) catalogCase {
	t.Helper()
	cc := catalogCase{entry: entry, client: catalogClient(t, entry), seedScopes: entry.Scopes}
	if len(cc.seedScopes) == 0 {
		cc.seedScopes = []string{"api", "refresh_token"}
	}
	params := entry.ExampleParams()
	for _, key := range slices.Sorted(maps.Keys(entry.Params)) {
		if entry.Params[key].Kind == "segment" {
			params[key] = "e2e-" + strings.ReplaceAll(key, "_", "-")
		}
		if value, ok := params[key]; ok {
			cc.args = append(cc.args, key+"="+value)
		}
	}
	settings, err := entry.Expand(params)
	if err != nil {
		t.Fatalf("Expand(%v) = %v", params, err)
	}
	tokenURL, err := url.Parse(settings.TokenURL)
	if err != nil {
		t.Fatalf("the entry's token URL %q: %v", settings.TokenURL, err)
	}
	cc.profile = authserver.Profile{
		Quirks: authserver.Quirks{
			TokenPath:             tokenURL.Path,
			RequireScopeOnRefresh: len(entry.Scopes) > 0 && entry.Refresh.ScopesOnRefresh != "optional",
		},
		OmitRefreshToken: entry.Refresh.Rotation == "never",
		OmitExpiresIn:    entry.Refresh.ExpiresIn == "absent",
	}
	if !cc.profile.OmitRefreshToken {
		cc.profile.RefreshGracePeriod = documentedGracePeriods[entry.Name]
	}
	return cc
}

// catalogClient registers the client as the entry's client_auth says,
// so that fosite refuses any other method.
func catalogClient(t *testing.T, entry *provider.Entry) authserver.Client {
	t.Helper()
	methods := map[string]string{
		"":             authserver.AuthMethodBasic, // the handler's default, secret_basic
		"secret_basic": authserver.AuthMethodBasic,
		"secret_post":  authserver.AuthMethodPost,
	}
	method, ok := methods[entry.ClientAuth]
	if !ok {
		t.Fatalf("client_auth %q: catalogClient registers no client of the test server for it", entry.ClientAuth)
	}
	return authserver.Client{
		ID: "catalog-" + entry.Name, Secret: catalogSecret, AuthMethod: method,
		Scopes: slices.Concat(authserver.DefaultScopes, entry.Scopes),
	}
}

func testCatalogEntry(t *testing.T, cc catalogCase) {
	entry := cc.entry
	auth := newAuthServer(t, authserver.Config{
		AccessTokenLifespan: catalogTokenLifespan, Clients: []authserver.Client{cc.client}, Profile: cc.profile,
	})
	api := newResourceServer(t, auth)
	if entry.HeaderScheme != "" {
		api.Scheme(entry.HeaderScheme)
	}
	upstream := hostport(api.URL())
	if len(entry.ExtraFields) > 0 {
		// The entry's extra fields name the API's base URL, as Salesforce's
		// instance_url and Zoho's api_domain do: the first is the upstream,
		// reached only if the entry exposes it.
		cc.profile.ExtraFields = map[string]string{}
		for _, field := range entry.ExtraFields {
			cc.profile.ExtraFields[field] = api.URL()
		}
		auth.SetProfile(cc.profile)
		upstream = "{http.oauth2_upstream.extra." + entry.ExtraFields[0] + ".hostport}"
	}
	seed, err := auth.Seed(t.Context(), cc.client.ID, cc.seedScopes...)
	if err != nil {
		t.Fatalf("Seed() = %v", err)
	}
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: upstream, keystore: ksOption, seed: seed, client: &cc.client,
		options: []string{
			strings.Join(append([]string{"provider", entry.Name}, cc.args...), " "),
			"expiry_skew " + expirySkew.String(),
		},
	})
	c := newClient(t, 2)

	if r := get(c, sc.URL()+"/grant"); r.status != http.StatusOK {
		t.Fatalf("first request (the seed's grant): %s; want 200", r)
	}
	granted := checkGeneration(t, dir, 2)
	expired := refreshAtExpiry(t, c, sc, dir)
	checkExpiry(t, cc, api, sc, granted, expired)

	// The provider ends the session of the access token in use: the
	// next request meets a 401, and its body is replayed after a grant.
	time.Sleep(minRefreshInterval) // a rejection of a token this old makes a grant
	rejected := api.Unauthorized()
	if err := auth.RevokeAccessToken(t.Context(), expired.Token.AccessToken()); err != nil {
		t.Fatalf("RevokeAccessToken() = %v", err)
	}
	postThrough(t, c, sc.URL()+"/replay", bytes.Repeat([]byte(entry.Name+" replayed body "), 4<<10))
	if got := api.Unauthorized() - rejected; got != 1 {
		t.Errorf("resource server answered 401 %d times after the revocation; want 1", got)
	}
	replayed := checkGeneration(t, dir, 4)
	checkRotation(t, cc, seed, granted, expired, replayed)
	if ok, attempts := auth.GrantCounts(authserver.GrantRefreshToken); ok != 3 || attempts != 3 {
		t.Errorf("refresh_token grants = %d of %d attempts; want 3 of 3", ok, attempts)
	}
	checkServerQuirks(t, cc, auth, seed, replayed)
}

// checkGeneration reads the stored key set, which must be at generation
// want.
func checkGeneration(t *testing.T, dir string, want int64) *keystore.KeySet {
	t.Helper()
	ks, _ := readKeySet(t, dir, keySetName)
	if ks.Generation != want {
		t.Fatalf("stored generation %d; want %d", ks.Generation, want)
	}
	return ks
}

// refreshAtExpiry sends paced requests, each answered 200, until the key
// set is refreshed (generation 3), and returns it.
func refreshAtExpiry(t *testing.T, c *http.Client, sc *sidecar.Process, dir string) *keystore.KeySet {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), profileTimeout)
	defer cancel()
	var ks *keystore.KeySet
	paced(ctx, catalogPollGap, func() {
		if r := get(c, sc.URL()+"/expiry"); r.status != http.StatusOK {
			t.Fatalf("request while the token expires: %s; want 200", r)
		}
		if ks, _ = readKeySet(t, dir, keySetName); ks.Generation >= 3 {
			cancel()
		}
	})
	if ks == nil || ks.Generation != 3 {
		t.Fatalf("no refresh at the token's expiry within %s (stored key set %v)", profileTimeout, ks)
	}
	return ks
}

// checkExpiry checks how the refresh at expiry came: for an entry whose
// provider sends no expires_in, only the API's 401 can have told (and the
// request was replayed); otherwise the sidecar knew the expiry.
func checkExpiry(t *testing.T, cc catalogCase, api *resourceserver.Server, sc *sidecar.Process, granted, expired *keystore.KeySet) {
	t.Helper()
	if !cc.profile.OmitExpiresIn {
		if granted.Expiry.IsZero() || expired.Expiry.IsZero() {
			t.Errorf("stored expiries %v, %v; want both set (expires_in sent)", granted.Expiry, expired.Expiry)
		}
		return
	}
	if !granted.Expiry.IsZero() || !expired.Expiry.IsZero() {
		t.Errorf("stored expiries %v, %v; want none (no expires_in)", granted.Expiry, expired.Expiry)
	}
	entries, err := sc.Entries()
	if err != nil {
		t.Fatal(err)
	}
	if got, replays := api.Unauthorized(), sidecar.Count(entries, sidecar.MsgReplaying); got != 1 || replays != 1 {
		t.Errorf("before the refresh at expiry: %d 401s, %d replays; want 1 and 1 (only a 401 tells)", got, replays)
	}
}

// checkRotation checks the refresh tokens stored: a new one every grant
// from a rotating provider, the seed throughout from one that never
// rotates.
func checkRotation(t *testing.T, cc catalogCase, seed string, stored ...*keystore.KeySet) {
	t.Helper()
	seen := map[string]int64{seed: 1}
	for _, ks := range stored {
		rt := ks.Token.RefreshToken()
		if cc.profile.OmitRefreshToken {
			if rt != seed {
				t.Errorf("generation %d holds another refresh token than the seed; want the seed kept (rotation never)", ks.Generation)
			}
			continue
		}
		if other, dup := seen[rt]; dup {
			t.Errorf("generations %d and %d hold the same refresh token; want a new one every grant", other, ks.Generation)
		}
		seen[rt] = ks.Generation
	}
}

// checkServerQuirks shows that the server had the entry's quirks, with
// token requests of the test's own (last: without a grace period, the
// reuse revokes the family): a refresh without scope is refused where
// scopes are required, and the spent seed is a reuse, or within a
// documented grace period a grant.
func checkServerQuirks(t *testing.T, cc catalogCase, auth *authserver.Server, seed string, current *keystore.KeySet) {
	t.Helper()
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
	if cc.profile.RequireScopeOnRefresh {
		if status, code := presentRefreshToken(t, auth, cc.client, current.Token.RefreshToken(), nil); status != http.StatusBadRequest || code != "invalid_request" {
			t.Errorf("refresh without scope = %d %q; want 400 invalid_request (scopes required on refresh)", status, code)
		}
	}
	if cc.profile.OmitRefreshToken {
		return
	}
	status, code := presentRefreshToken(t, auth, cc.client, seed, cc.entry.Scopes)
	switch {
	case cc.profile.RefreshGracePeriod > 0 && status != http.StatusOK:
		t.Errorf("the spent seed within the %s grace period = %d %q; want 200", cc.profile.RefreshGracePeriod, status, code)
	case cc.profile.RefreshGracePeriod == 0 && (code != "invalid_grant" || auth.ReuseDetections() != 1):
		t.Errorf("the spent seed = %d %q, %d reuse detections; want invalid_grant and 1 (rotation without a grace period)", status, code, auth.ReuseDetections())
	}
}

// presentRefreshToken sends a refresh_token grant to auth as client, the
// way it is registered to authenticate, and returns the answer's status
// and error code.
func presentRefreshToken(t *testing.T, auth *authserver.Server, client authserver.Client, refreshToken string, scopes []string) (int, string) {
	t.Helper()
	form := url.Values{"grant_type": {authserver.GrantRefreshToken}, "refresh_token": {refreshToken}}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	if client.AuthMethod == authserver.AuthMethodPost {
		form.Set("client_id", client.ID)
		form.Set("client_secret", client.Secret)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, auth.TokenURL(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if client.AuthMethod == authserver.AuthMethodBasic {
		req.SetBasicAuth(url.QueryEscape(client.ID), url.QueryEscape(client.Secret))
	}
	r := do(http.DefaultClient, req)
	if r.err != nil {
		t.Fatalf("token request: %v", r.err)
	}
	var answer struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(r.body, &answer) // a grant's answer has no error
	return r.status, answer.Error
}
