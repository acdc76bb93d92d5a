package keystore

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// TestKeySetNext: the next generation keeps the client the key set is bound
// to (an unbound document stays unbound until its writer binds it), in a
// copy, so changing one document's binding never changes the other's.
func TestKeySetNext(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		client *Binding
	}{
		{"unbound", nil},
		{"bound", &Binding{TokenURL: "https://login.example/token", ClientID: "client-a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ks := &KeySet{Name: "sf", Generation: 3, Token: Token{}, Client: tt.client, Callback: map[string]string{"realmId": "42"}}
			ks.Token.SetString(FieldRefreshToken, "rt-3")
			response := Token{}
			response.SetString(FieldAccessToken, "at-4")
			next := ks.Next(response, now.Add(time.Hour), now)
			if next.Generation != 4 || next.Token.RefreshToken() != "rt-3" {
				t.Errorf("Next() = generation %d refresh %q; want 4 rt-3", next.Generation, next.Token.RefreshToken())
			}
			if !reflect.DeepEqual(next.Client, tt.client) {
				t.Errorf("Next().Client = %+v; want %+v", next.Client, tt.client)
			}
			if next.Callback["realmId"] != "42" {
				t.Errorf("Next().Callback = %v; want realmId kept", next.Callback)
			}
			if tt.client != nil && next.Client == tt.client {
				t.Errorf("Next().Client shares the previous document's Binding; want a copy")
			}
		})
	}
}

// TestKeySetNextRefreshExpiry: the refresh token's expiry (and whether a
// refresh extends it) stays with the refresh token: kept when the response
// leaves the refresh token as it was (none sent, or the same one), dropped
// when a new refresh token comes, whose lifetime the old one's says
// nothing about.
func TestKeySetNextRefreshExpiry(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	refreshExpiry := now.Add(90 * 24 * time.Hour)
	tests := []struct {
		name         string
		refreshToken string // of the response; "" sends none
		wantExpiry   time.Time
	}{
		{"no refresh token in the response", "", refreshExpiry},
		{"the same refresh token", "rt-3", refreshExpiry},
		{"a new refresh token", "rt-4", time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ks := &KeySet{Name: "sf", Generation: 3, Token: Token{}, RefreshExpiry: refreshExpiry, RefreshExpiryFixed: true}
			ks.Token.SetString(FieldRefreshToken, "rt-3")
			response := Token{}
			response.SetString(FieldAccessToken, "at-4")
			if tt.refreshToken != "" {
				response.SetString(FieldRefreshToken, tt.refreshToken)
			}
			next := ks.Next(response, now.Add(time.Hour), now)
			wantFixed := !tt.wantExpiry.IsZero()
			if !next.RefreshExpiry.Equal(tt.wantExpiry) || next.RefreshExpiryFixed != wantFixed {
				t.Errorf("Next(%s).RefreshExpiry = %v (fixed %v); want %v (fixed %v)", tt.name,
					next.RefreshExpiry, next.RefreshExpiryFixed, tt.wantExpiry, wantFixed)
			}
		})
	}
}

// TestKeySetRefreshExpiryJSON: the refresh token's expiry is the document's
// refresh_expiry, left out while unknown, and comes back as it went.
func TestKeySetRefreshExpiryJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		ks        KeySet
		wantField bool
	}{
		{"unknown", KeySet{Name: "sf", Generation: 1, Token: Token{}}, false},
		{"known", KeySet{Name: "gh", Generation: 2, Token: Token{},
			RefreshExpiry: time.Date(2027, 5, 28, 7, 0, 0, 0, time.UTC), RefreshExpiryFixed: true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data, err := json.Marshal(&tt.ks)
			if err != nil {
				t.Fatal(err)
			}
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(data, &fields); err != nil {
				t.Fatal(err)
			}
			_, hasExpiry := fields["refresh_expiry"]
			_, hasFixed := fields["refresh_expiry_fixed"]
			if hasExpiry != tt.wantField || hasFixed != tt.wantField {
				t.Errorf("json.Marshal(%s) = %s; want refresh_expiry and refresh_expiry_fixed present: %v", tt.name, data, tt.wantField)
			}
			var back KeySet
			if err := json.Unmarshal(data, &back); err != nil {
				t.Fatal(err)
			}
			if !back.RefreshExpiry.Equal(tt.ks.RefreshExpiry) || back.RefreshExpiryFixed != tt.ks.RefreshExpiryFixed {
				t.Errorf("json round trip of %s = %v (fixed %v); want %v (fixed %v)", tt.name,
					back.RefreshExpiry, back.RefreshExpiryFixed, tt.ks.RefreshExpiry, tt.ks.RefreshExpiryFixed)
			}
		})
	}
}
