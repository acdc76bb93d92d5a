package authserver

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Scenario: profiles that answer a dead refresh token in a provider's own
// way: Slack's HTTP 200 with {"ok": false, "error":
// "invalid_refresh_token"}, GitHub's 400 bad_refresh_token, and fosite's
// own 400 invalid_grant without a profile.
func TestErrorProfiles(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		profile    Profile
		wantStatus int
		wantBody   []string
	}{
		{"fosite", Profile{}, http.StatusBadRequest, []string{`"error":"invalid_grant"`}},
		{"Slack", Slack(), http.StatusOK, []string{`"ok":false`, `"error":"invalid_refresh_token"`}},
		{"renamed only", Profile{ErrorCodes: map[string]string{"invalid_grant": "bad_refresh_token"}},
			http.StatusBadRequest, []string{`"error":"bad_refresh_token"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t, Config{Profile: tt.profile})
			form := url.Values{"grant_type": {GrantRefreshToken}, "refresh_token": {"not-a-refresh-token"}}
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.TokenURL(), strings.NewReader(form.Encode()))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.SetBasicAuth(DefaultClientID, DefaultClientSecret)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("refresh with a bad token = %d %s; want %d", resp.StatusCode, body, tt.wantStatus)
			}
			for _, want := range tt.wantBody {
				if !strings.Contains(string(body), want) {
					t.Errorf("refresh with a bad token answered %s; want it to hold %s", body, want)
				}
			}
		})
	}
}

// Scenario: a profile that announces the refresh token's lifetime counts it
// down to RefreshExpiresAt at every grant.
func TestRefreshLifetimeProfile(t *testing.T) {
	t.Parallel()
	end := time.Now().Add(time.Hour)
	s := newServer(t, Config{Profile: Profile{RefreshLifetimeField: "refresh_expires_in", RefreshExpiresAt: end}})
	tok := mustRefresh(t, clientContext(t), defaultConfig(s), mustSeed(t, s, DefaultClientID))
	secs, ok := tok.Extra("refresh_expires_in").(float64)
	if !ok || secs > 3600 || secs < 3590 {
		t.Errorf("refresh_expires_in = %v; want the seconds left until %v, about 3600", tok.Extra("refresh_expires_in"), end)
	}
}
