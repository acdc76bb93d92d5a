package oauth2upstream

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// ResourceOwnerOptions are the resource owner's credentials that the
// password grant sends (RFC 6749 section 4.3), for legacy APIs that offer
// no other grant: OAuth 2.1 drops it, and RFC 9700 section 2.4
// (https://www.rfc-editor.org/rfc/rfc9700#section-2.4) says it MUST NOT
// be used. Handler embeds them, so their JSON fields sit beside the
// handler's own.
type ResourceOwnerOptions struct {
	// Username is the resource owner's username, sent by grant password
	// only when the key set has no refresh token that can serve (its
	// first grant, or after the token endpoint called the refresh token
	// dead). Placeholders (usually {env.*}) are replaced when the handler
	// starts; it is never logged, and redacted from what the token
	// endpoint's errors quote. Required with grant password, refused with
	// any other. Default: none.
	Username string `json:"username,omitempty"`

	// Password is the resource owner's password, sent with Username. It
	// must be given as a placeholder ({env.PASSWORD}, {file./run/secret}),
	// replaced when the handler starts, so that Caddy's configuration and
	// its admin API never hold it; it is never logged, and redacted from
	// errors. Required with grant password, refused with any other.
	// Default: none.
	Password string `json:"password,omitempty"`
}

// provisionResourceOwner replaces the placeholders of the resource
// owner's credentials, refusing a password written in the configuration
// itself (or substituted into it by the Caddyfile's {$VAR}): Caddy's
// admin API serves the configuration.
func (o *ResourceOwnerOptions) provisionResourceOwner(repl *caddy.Replacer) error {
	raw := o.Password
	o.Username = repl.ReplaceKnown(o.Username, "")
	o.Password = repl.ReplaceKnown(raw, "")
	switch {
	case raw == "":
		return nil
	case o.Password == raw:
		return fmt.Errorf("password: give it as a placeholder replaced at start ({env.VAR} or {file.PATH}), " +
			"not in the configuration, which Caddy's admin API serves ({$VAR} is substituted into it)")
	case o.Password == "":
		return fmt.Errorf("password %s: the placeholder is empty", raw)
	}
	return nil
}

// validateResourceOwner checks that the resource owner's credentials are
// given with grant password, and only then.
func (o *ResourceOwnerOptions) validateResourceOwner(grant string) error {
	password := grant == credential.GrantPassword
	switch {
	case password && (o.Username == "" || o.Password == ""):
		return fmt.Errorf("grant password needs username and password (the resource owner's)")
	case !password && (o.Username != "" || o.Password != ""):
		return fmt.Errorf("username and password are the resource owner's credentials of grant password; grant is %s", grant)
	}
	return nil
}
