package authserver

import (
	"maps"
	"time"

	"github.com/ory/fosite"
)

// Profile shapes token responses like a given provider's. The zero Profile is
// a rotating provider that returns refresh_token and expires_in on every
// grant, as Microsoft, Okta, Auth0 and Hydra do.
type Profile struct {
	// Quirks are the provider's departures from RFC 6749 (quirks.go).
	Quirks
	// OmitRefreshToken drops refresh_token from refresh_token grant responses
	// and turns rotation off: the presented refresh token stays valid and is
	// the only one, as with Salesforce (rotation disabled) and Google.
	OmitRefreshToken bool
	// OmitExpiresIn drops expires_in, as Salesforce does: only a 401 tells
	// the client that its access token expired.
	OmitExpiresIn bool
	// ExtraFields are added to every token response, such as Salesforce's
	// instance_url, the API's base URL.
	ExtraFields map[string]string
	// ErrorsWithStatusOK answers a refused token request with HTTP 200 and
	// {"ok": false, "error": ..., "error_description": ...} rather than
	// fosite's 4xx, as Slack's Web API does (and GitHub, without "ok").
	ErrorsWithStatusOK bool
	// ErrorCodes rename fosite's error codes in error answers, such as
	// invalid_grant to Slack's invalid_refresh_token or GitHub's
	// bad_refresh_token.
	ErrorCodes map[string]string
	// RefreshLifetimeField, with RefreshExpiresAt, names the field that
	// announces the refresh token's lifetime in seconds: GitHub's
	// refresh_token_expires_in, Intuit's x_refresh_token_expires_in,
	// Keycloak's refresh_expires_in.
	RefreshLifetimeField string
	// RefreshExpiresAt is what that lifetime counts down to: every grant
	// announces the whole seconds left until it, as a session maximum
	// does (a lifetime that slides moves it with SetProfile).
	RefreshExpiresAt time.Time
}

// Slack answers errors with HTTP 200, {"ok": false, "error": ...}, and
// calls a dead refresh token invalid_refresh_token.
func Slack() Profile {
	return Profile{ErrorsWithStatusOK: true, ErrorCodes: map[string]string{"invalid_grant": "invalid_refresh_token"}}
}

// Microsoft is a rotating provider: a new refresh token on every grant.
func Microsoft() Profile { return Profile{} }

// Google returns no new refresh token; the original one stays valid.
func Google() Profile { return Profile{OmitRefreshToken: true} }

// Salesforce returns neither a new refresh token nor expires_in, and names
// the API's base URL in instance_url.
func Salesforce(instanceURL string) Profile {
	return Profile{
		OmitRefreshToken: true,
		OmitExpiresIn:    true,
		ExtraFields:      map[string]string{"instance_url": instanceURL},
	}
}

func (p Profile) clone() Profile {
	p.ExtraFields = maps.Clone(p.ExtraFields)
	p.ErrorCodes = maps.Clone(p.ErrorCodes)
	return p
}

// profiledResponse rewrites fosite's token response map just before fosite
// serialises it (Fosite.WriteAccessResponse calls ToMap).
type profiledResponse struct {
	fosite.AccessResponder
	profile Profile
}

func (r profiledResponse) ToMap() map[string]any {
	m := r.AccessResponder.ToMap()
	if r.profile.OmitRefreshToken {
		delete(m, "refresh_token")
	}
	if r.profile.OmitExpiresIn {
		delete(m, "expires_in")
	}
	for name, value := range r.profile.ExtraFields {
		m[name] = value
	}
	if field := r.profile.RefreshLifetimeField; field != "" && !r.profile.RefreshExpiresAt.IsZero() {
		m[field] = max(int64(time.Until(r.profile.RefreshExpiresAt)/time.Second), 0)
	}
	return m
}
