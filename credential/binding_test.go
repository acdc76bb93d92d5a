package credential

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// ownBinding is the client of newEngineFixture's engine.
func (f *refresherFixture) ownBinding() *keystore.Binding {
	return &keystore.Binding{TokenURL: f.te.URL(), ClientID: "client-1"}
}

// keySet is testKeySet bound to the fixture's client: a document as the
// engine, or another process of the same client, stores it.
func (f *refresherFixture) keySet(name string, gen int64, access, refresh string, expiry time.Time) *keystore.KeySet {
	return ownedBy(f.r, testKeySet(name, gen, access, refresh, expiry))
}

// ownedBy returns ks bound to e's client.
func ownedBy(e *Engine, ks *keystore.KeySet) *keystore.KeySet {
	own := e.binding()
	return boundTo(ks, &own)
}

// otherClient is a client other than the fixture's own.
func (f *refresherFixture) otherClient() *keystore.Binding {
	return &keystore.Binding{TokenURL: f.te.URL(), ClientID: "client-2"}
}

// boundTo returns ks bound to client.
func boundTo(ks *keystore.KeySet, client *keystore.Binding) *keystore.KeySet {
	ks.Client = client
	return ks
}

// wantForeign fails the test unless err is the permanent key_set_foreign
// refusal of key set name.
func wantForeign(t *testing.T, call string, err error, name string) {
	t.Helper()
	re := asError(t, err)
	if re.Code != CodeKeySetForeign || re.Temporary || re.KeySet != name {
		t.Errorf("%s = {KeySet %q, Code %q, Temporary %v}; want {%q, %q, false}",
			call, re.KeySet, re.Code, re.Temporary, name, CodeKeySetForeign)
	}
}

// wantBound fails the test unless the stored key set name is generation gen
// bound to the fixture's client.
func (f *refresherFixture) wantBound(t *testing.T, name string, gen int64) {
	t.Helper()
	stored := loadKeySet(t, f.other, name)
	if stored.Generation != gen || stored.Client == nil || *stored.Client != *f.ownBinding() {
		t.Errorf("stored = generation %d client %+v; want %d %+v", stored.Generation, stored.Client, gen, f.ownBinding())
	}
}

// TestEngineRefusesForeignKeySet: a handler steered (by a placeholder
// key_set) to a key set granted for another client neither sends its
// access token (no credential, whatever its expiry), nor spends its refresh
// token at this client's token endpoint, nor writes over it
// (DESIGN.md invariant 9); its status is needs_reauthorization with
// key_set_foreign.
func TestEngineRefusesForeignKeySet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		client func(own keystore.Binding) keystore.Binding
		expiry time.Duration // of the access token, from now
	}{
		{"other client_id", func(own keystore.Binding) keystore.Binding {
			return keystore.Binding{TokenURL: own.TokenURL, ClientID: "client-2"}
		}, time.Hour},
		{"other token_url", func(own keystore.Binding) keystore.Binding {
			return keystore.Binding{TokenURL: "https://login.other.example/token", ClientID: own.ClientID}
		}, time.Hour},
		{"token_url spelled otherwise", func(own keystore.Binding) keystore.Binding {
			return keystore.Binding{TokenURL: own.TokenURL + "/", ClientID: own.ClientID}
		}, time.Hour},
		{"other client, access token expired", func(own keystore.Binding) keystore.Binding {
			return keystore.Binding{TokenURL: "https://login.other.example/token", ClientID: "client-2"}
		}, -time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			client := tt.client(*f.ownBinding())
			storeKeySet(t, f.store, boundTo(testKeySet("sf", 1, "at-b", "rt-0", f.clock.Now().Add(tt.expiry)), &client))
			before := f.readDocument(t, "sf")

			cred, err := f.r.Current(context.Background(), "sf")
			if cred != nil {
				t.Errorf("Current(%q) = %s; want no credential", "sf", credString(cred))
			}
			wantForeign(t, `Current("sf")`, err, "sf")
			cred, err = f.r.Rejected(context.Background(), "sf", 1)
			if cred != nil {
				t.Errorf("Rejected(%q, 1) = %s; want no credential", "sf", credString(cred))
			}
			wantForeign(t, `Rejected("sf", 1)`, err, "sf")
			_, err = f.r.ForceRefresh(context.Background(), "sf")
			wantForeign(t, `ForceRefresh("sf")`, err, "sf")
			if got := f.sent.n.Load(); got != 0 {
				t.Errorf("token requests = %d; want 0", got)
			}
			if after := f.readDocument(t, "sf"); !bytes.Equal(after, before) {
				t.Errorf("stored key set changed:\n%s\nwant\n%s", after, before)
			}
			_, err = f.r.Status(context.Background(), "sf")
			if s := FailedStatus("sf", err); s.State != StateNeedsReauthorization || s.ErrorCode != CodeKeySetForeign {
				t.Errorf("FailedStatus(%q, %v) = {State %q, ErrorCode %q}; want {%q, %q}",
					"sf", err, s.State, s.ErrorCode, StateNeedsReauthorization, CodeKeySetForeign)
			}
		})
	}
}

// TestEngineRefusesForeignSuccessor: a key set in use whose stored
// successor belongs to another client is not refreshed through it: the
// rejection that would refresh gets key_set_foreign, no token request is
// sent, and the status says so.
func TestEngineRefusesForeignSuccessor(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, boundTo(testKeySet("sf", 1, "at-own", "rt-0", f.clock.Now().Add(time.Hour)), f.ownBinding()))
	f.mustCurrent(t, "sf")
	storeNext(t, f.other, boundTo(testKeySet("sf", 2, "at-b", "rt-b", f.clock.Now().Add(time.Hour)), f.otherClient()))

	cred, err := f.r.Rejected(context.Background(), "sf", 1)
	if cred != nil {
		t.Errorf("Rejected(%q, 1) = %s; want no credential", "sf", credString(cred))
	}
	wantForeign(t, `Rejected("sf", 1)`, err, "sf")
	if got := f.sent.n.Load(); got != 0 {
		t.Errorf("token requests = %d; want 0", got)
	}
	s, err := f.r.Status(context.Background(), "sf")
	if err != nil || s.State != StateNeedsReauthorization || s.ErrorCode != CodeKeySetForeign || s.Generation != 1 {
		t.Errorf("Status(%q) = {State %q, ErrorCode %q, Generation %d}, %v; want {%q, %q, 1}, nil",
			"sf", s.State, s.ErrorCode, s.Generation, err, StateNeedsReauthorization, CodeKeySetForeign)
	}
}

// wantUnbound fails the test unless err is the permanent key_set_unbound
// refusal of key set name, saying how to bind it.
func wantUnbound(t *testing.T, call string, err error, name string) {
	t.Helper()
	re := asError(t, err)
	if re.Code != CodeKeySetUnbound || re.Temporary || re.KeySet != name {
		t.Errorf("%s = {KeySet %q, Code %q, Temporary %v}; want {%q, %q, false}",
			call, re.KeySet, re.Code, re.Temporary, name, CodeKeySetUnbound)
	}
	for _, fix := range []string{"PUT /oauth2_upstream/key_sets/", "caddy oauth2-upstream seed", "bind_unbound"} {
		if !strings.Contains(re.Error(), fix) {
			t.Errorf("%s = %q; want it to name the fix %q", call, re.Error(), fix)
		}
	}
}

// TestEngineRefusesUnboundKeySet: a document that names no client (the
// README's hand-written seed of before, or one written before key sets
// were bound) could hold any client's tokens, so an engine that selects
// key sets per request never takes it up, nor does one with a fixed key
// set unless Config.BindUnbound names it (DESIGN.md invariant 9): its
// access token is not sent, its refresh token is not spent at this
// client's token endpoint, the document is not written over, and its
// status says key_set_unbound.
func TestEngineRefusesUnboundKeySet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		seedName    string // a fixed key set's engine has one (options.go)
		bindUnbound string
		expiry      time.Duration // of the access token, from now
	}{
		{"per request", "", "", time.Hour},
		{"per request, access token expired", "", "", -time.Minute},
		{"fixed key set", "sf", "", time.Hour},
		{"fixed key set, access token expired", "sf", "", -time.Minute},
		{"fixed key set, bind_unbound for another name", "other", "other", time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			f.r.seedName, f.r.bindUnbound = tt.seedName, tt.bindUnbound
			storeKeySet(t, f.store, testKeySet("sf", 1, "at-b", "rt-0", f.clock.Now().Add(tt.expiry)))
			before := f.readDocument(t, "sf")

			cred, err := f.r.Current(context.Background(), "sf")
			if cred != nil {
				t.Errorf("Current(%q) = %s; want no credential", "sf", credString(cred))
			}
			wantUnbound(t, `Current("sf")`, err, "sf")
			cred, err = f.r.Rejected(context.Background(), "sf", 1)
			if cred != nil {
				t.Errorf("Rejected(%q, 1) = %s; want no credential", "sf", credString(cred))
			}
			wantUnbound(t, `Rejected("sf", 1)`, err, "sf")
			_, err = f.r.ForceRefresh(context.Background(), "sf")
			wantUnbound(t, `ForceRefresh("sf")`, err, "sf")
			if got := f.sent.n.Load(); got != 0 {
				t.Errorf("token requests = %d; want 0", got)
			}
			if after := f.readDocument(t, "sf"); !bytes.Equal(after, before) {
				t.Errorf("stored key set changed:\n%s\nwant\n%s", after, before)
			}
			_, err = f.r.Status(context.Background(), "sf")
			if s := FailedStatus("sf", err); s.State != StateNeedsReauthorization || s.ErrorCode != CodeKeySetUnbound {
				t.Errorf("FailedStatus(%q, %v) = {State %q, ErrorCode %q}; want {%q, %q}",
					"sf", err, s.State, s.ErrorCode, StateNeedsReauthorization, CodeKeySetUnbound)
			}
		})
	}
}

// TestEngineRefusesUnboundSuccessor: a key set in use whose stored
// successor names no client (a document written over it by hand) is not
// refreshed through it: the rejection that would refresh gets
// key_set_unbound, and no token request is sent.
func TestEngineRefusesUnboundSuccessor(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "at-own", "rt-0", f.clock.Now().Add(time.Hour)))
	f.mustCurrent(t, "sf")
	storeNext(t, f.other, testKeySet("sf", 2, "", "rt-b", time.Time{}))

	cred, err := f.r.Rejected(context.Background(), "sf", 1)
	if cred != nil {
		t.Errorf("Rejected(%q, 1) = %s; want no credential", "sf", credString(cred))
	}
	wantUnbound(t, `Rejected("sf", 1)`, err, "sf")
	if got := f.sent.n.Load(); got != 0 {
		t.Errorf("token requests = %d; want 0", got)
	}
}

// TestEngineBindsUnboundKeySet: with Config.BindUnbound naming it (the
// bind_unbound option of a handler with a fixed key set), a key set
// stored before key sets were bound is used as it is, and the next grant
// stores its successor bound to the engine's client; from then on it is
// an ordinary bound key set.
func TestEngineBindsUnboundKeySet(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	f.r.seedName, f.r.bindUnbound = "sf", "sf"
	storeKeySet(t, f.store, testKeySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(time.Hour)))

	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-old" {
		t.Errorf("Current(%q) = %s; want Bearer at-old", "sf", credString(cred))
	}
	cred, err := f.r.Rejected(context.Background(), "sf", 1)
	if err != nil || cred.Header != "Bearer at-1" || cred.KeySet.Generation != 2 {
		t.Fatalf("Rejected(%q, 1) = %v, %v; want Bearer at-1 generation 2", "sf", credString(cred), err)
	}
	f.wantBound(t, "sf", 2)
}

// TestEnginePutReplacesUnboundKeySet: an operator's Put over a document
// that names no client seeds the key set anew, bound: it does not carry
// the unbound document's refresh token or proof key into the bound
// successor, which would bind another client's tokens to this one.
func TestEnginePutReplacesUnboundKeySet(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	unbound := testKeySet("sf", 1, "at-old", "rt-unbound", time.Time{})
	unbound.ProofKey = []byte(`{"kty":"EC"}`)
	storeKeySet(t, f.store, unbound)

	ks, err := f.r.Put(context.Background(), "sf", credentialtest.TokenOf(t, `{"access_token":"at-put"}`))
	if err != nil {
		t.Fatalf("Put(%q) = %v; want nil", "sf", err)
	}
	f.wantBound(t, "sf", 2)
	stored := loadKeySet(t, f.other, "sf")
	if rt := stored.Token.RefreshToken(); rt != "" || stored.ProofKey != nil || ks.Token.AccessToken() != "at-put" {
		t.Errorf("stored after Put = {access %q, refresh %q, proof key of %d bytes}; want {at-put, none, none}",
			stored.Token.AccessToken(), rt, len(stored.ProofKey))
	}
}

// TestEngineWritesCarryBinding: every key set the engine stores is bound to
// its client: a grant's result (from a bound key set, a seed of the
// refresh_token option, or nothing for client_credentials) and an
// operator's Put, new or over an unbound key set.
func TestEngineWritesCarryBinding(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		prepare func(t *testing.T, f *refresherFixture) // stores what the key set starts as
		write   func(t *testing.T, f *refresherFixture) // makes the engine write
		wantGen int64
	}{
		{"grant", func(t *testing.T, f *refresherFixture) {
			storeKeySet(t, f.store, boundTo(testKeySet("sf", 1, "", "rt-0", time.Time{}), f.ownBinding()))
		}, func(t *testing.T, f *refresherFixture) { f.mustCurrent(t, "sf") }, 2},
		{"seed and grant", func(t *testing.T, f *refresherFixture) {
			f.r.seedName, f.r.seedToken = "sf", "rt-0"
		}, func(t *testing.T, f *refresherFixture) { f.mustCurrent(t, "sf") }, 2},
		{"client_credentials grant", func(t *testing.T, f *refresherFixture) {
			f.r.client.Grant = GrantClientCredentials
		}, func(t *testing.T, f *refresherFixture) { f.mustCurrent(t, "sf") }, 1},
		{"Put, new", func(*testing.T, *refresherFixture) {}, mustPut, 1},
		{"Put over an unbound key set", func(t *testing.T, f *refresherFixture) {
			storeKeySet(t, f.store, testKeySet("sf", 2, "at-old", "rt-old", time.Time{}))
		}, mustPut, 3},
		{"Put over a bound key set", func(t *testing.T, f *refresherFixture) {
			storeKeySet(t, f.store, boundTo(testKeySet("sf", 1, "at-old", "rt-old", time.Time{}), f.ownBinding()))
		}, mustPut, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			tt.prepare(t, f)
			tt.write(t, f)
			f.wantBound(t, "sf", tt.wantGen)
		})
	}
}

// mustPut puts an operator's token into key set sf.
func mustPut(t *testing.T, f *refresherFixture) {
	t.Helper()
	ks, err := f.r.Put(context.Background(), "sf", credentialtest.TokenOf(t, `{"access_token":"at-put","refresh_token":"rt-put"}`))
	if err != nil || ks.Client == nil || *ks.Client != *f.ownBinding() {
		t.Fatalf("Put(%q) = %+v, %v; want a key set bound to %+v", "sf", ks, err, f.ownBinding())
	}
}

// TestEnginePutRefusesForeignKeySet: an operator's Put through a handler of
// one client does not write over another client's key set.
func TestEnginePutRefusesForeignKeySet(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, boundTo(testKeySet("sf", 1, "at-b", "rt-b", time.Time{}), f.otherClient()))
	before := f.readDocument(t, "sf")

	ks, err := f.r.Put(context.Background(), "sf", credentialtest.TokenOf(t, `{"refresh_token":"rt-put"}`))
	if ks != nil {
		t.Errorf("Put(%q) = generation %d; want nothing stored", "sf", ks.Generation)
	}
	wantForeign(t, `Put("sf")`, err, "sf")
	if after := f.readDocument(t, "sf"); !bytes.Equal(after, before) {
		t.Errorf("stored key set changed:\n%s\nwant\n%s", after, before)
	}
}

// TestEngineAdoptRefusesForeignKeySet: a key set another engine (of
// another client) stored over the same keystore is not taken into use.
func TestEngineAdoptRefusesForeignKeySet(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, boundTo(testKeySet("sf", 1, "at-own", "rt-0", f.clock.Now().Add(time.Hour)), f.ownBinding()))
	f.mustCurrent(t, "sf")

	f.r.Adopt("sf", boundTo(testKeySet("sf", 2, "at-b", "rt-b", f.clock.Now().Add(time.Hour)), f.otherClient()))
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-own" || cred.KeySet.Generation != 1 {
		t.Errorf("Current(%q) after Adopt of another client's key set = %s; want Bearer at-own generation 1", "sf", credString(cred))
	}
	if s, err := f.r.Status(context.Background(), "sf"); err != nil || s.ErrorCode != CodeKeySetForeign {
		t.Errorf("Status(%q) = {ErrorCode %q}, %v; want {%q}, nil", "sf", s.ErrorCode, err, CodeKeySetForeign)
	}

	f.r.Adopt("new", boundTo(testKeySet("new", 1, "at-b", "rt-b", f.clock.Now().Add(time.Hour)), f.otherClient()))
	if got := f.r.Statuses(); len(got) != 1 {
		t.Errorf("Statuses() after Adopt of another client's new key set = %+v; want only sf", got)
	}
}

// TestEngineForeignSuccessorNotAdopted: when a grant fails with
// invalid_grant or its write conflicts, and the keystore holds a newer
// generation bound to another client, that generation is not adopted: the
// refresh fails with key_set_foreign, and so do later requests, without
// another token request.
func TestEngineForeignSuccessorNotAdopted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		answer func(w http.ResponseWriter) bool // after the other client's write
	}{
		{"invalid_grant", func(w http.ResponseWriter) bool { answerInvalidGrant(w); return true }},
		{"write conflict", func(http.ResponseWriter) bool { return false }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
			var once sync.Once
			f.respond(func(w http.ResponseWriter, r *http.Request) bool {
				var err error
				once.Do(func() {
					err = f.other.Save(r.Context(), boundTo(testKeySet("sf", 2, "at-b", "rt-b", f.clock.Now().Add(time.Hour)), f.otherClient()))
				})
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return true
				}
				return tt.answer(w)
			})
			for i := range 2 {
				cred, err := f.r.Current(context.Background(), "sf")
				if cred != nil {
					t.Errorf("Current(%q) #%d = %s; want no credential", "sf", i+1, credString(cred))
				}
				wantForeign(t, fmt.Sprintf(`Current("sf") #%d`, i+1), err, "sf")
			}
			if got := f.sent.n.Load(); got != 1 {
				t.Errorf("token requests = %d; want 1", got)
			}
			if stored := loadKeySet(t, f.other, "sf"); stored.Token.AccessToken() != "at-b" || *stored.Client != *f.otherClient() {
				t.Errorf("stored = %q bound to %+v; want the other client's at-b", stored.Token.AccessToken(), stored.Client)
			}
		})
	}
}

// TestEngineCachedFailureForeignSuccessor: after invalid_grant, a newer
// generation that another client's engine stored is not adopted as the
// cure (as an operator's reseed would be).
func TestEngineCachedFailureForeignSuccessor(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-other") // the stored rt-0 is no longer valid
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	if _, err := f.r.Current(context.Background(), "sf"); asError(t, err).Code != "invalid_grant" {
		t.Fatalf("Current(%q) = %v; want invalid_grant", "sf", err)
	}
	storeNext(t, f.other, boundTo(testKeySet("sf", 2, "at-b", "rt-b", f.clock.Now().Add(time.Hour)), f.otherClient()))

	for i := range 2 {
		cred, err := f.r.Current(context.Background(), "sf")
		if cred != nil {
			t.Errorf("Current(%q) #%d = %s; want no credential", "sf", i+1, credString(cred))
		}
		wantForeign(t, fmt.Sprintf(`Current("sf") #%d`, i+1), err, "sf")
	}
	if got := f.sent.n.Load(); got != 1 {
		t.Errorf("token requests = %d; want 1", got)
	}
	// The key set in use is still our generation 1, not theirs.
	s, err := f.r.Status(context.Background(), "sf")
	if err != nil || s.Generation != 1 || s.State != StateNeedsReauthorization || s.ErrorCode != CodeKeySetForeign {
		t.Errorf("Status(%q) = {Generation %d, State %q, ErrorCode %q}, %v; want {1, %q, %q}, nil",
			"sf", s.Generation, s.State, s.ErrorCode, err, StateNeedsReauthorization, CodeKeySetForeign)
	}
}
