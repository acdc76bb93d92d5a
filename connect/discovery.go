package connect

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/discovery"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
)

// discover reads the authorization endpoint from the issuer's metadata
// when Issuer is set and AuthorizeURL is not; with an AuthorizeURL the page
// needs nothing of the metadata, and reads none. The metadata also says
// whether the server sends iss in its redirects back (RFC 9207 section 3):
// when it does not say so, a redirect back without iss is taken, and one
// with iss must still name Issuer.
func (c *Connect) discover(ctx caddy.Context) error {
	if c.Issuer == "" || c.AuthorizeURL != "" {
		return nil
	}
	md, err := live.From(ctx).Metadata().Get(ctx, c.Issuer, discovery.DefaultTimeout)
	switch {
	case errors.Is(err, discovery.ErrUnreachable):
		return fmt.Errorf("issuer %q: its metadata could not be read: %w; set authorize_url to start without it", c.Issuer, err)
	case err != nil:
		return fmt.Errorf("issuer %q: %w", c.Issuer, err)
	case md.AuthorizationEndpoint == "":
		return fmt.Errorf("issuer %q: its metadata (%s) names no authorization_endpoint; set authorize_url", c.Issuer, md.Location)
	}
	c.AuthorizeURL = md.AuthorizationEndpoint
	c.issOptional = !md.AuthorizationResponseIssSupported
	return nil
}
