package connect

import (
	"maps"
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/provider"
)

// unmarshalProvider reads `provider <name> [<key>=<value>...]`.
func (c *Connect) unmarshalProvider(d *caddyfile.Dispenser) error {
	if c.Provider != "" {
		return d.Errf("provider given twice")
	}
	name, params, err := provider.ParseOption(d.RemainingArgs())
	if err != nil {
		return d.Err(err.Error())
	}
	c.Provider, c.ProviderParams = name, params
	return nil
}

// applyProvider fills the page's options left unset from the provider's
// entry (its parameters' placeholders replaced first): the authorization
// URL, each authorize parameter not given, the issuer, and the scopes a
// flow requests when neither the page nor the handler names any.
func (c *Connect) applyProvider(repl *caddy.Replacer) error {
	s, ok, err := provider.Resolve(c.Provider, c.ProviderParams, func(v string) string { return repl.ReplaceKnown(v, "") })
	if !ok {
		return err
	}
	var set []string
	if c.AuthorizeURL == "" && s.AuthorizeURL != "" {
		c.AuthorizeURL = s.AuthorizeURL
		set = append(set, "authorize_url")
	}
	if c.Issuer == "" && s.Issuer != "" {
		c.Issuer = s.Issuer
		set = append(set, "issuer")
	}
	if len(c.CallbackFields) == 0 && len(s.CallbackFields) > 0 {
		c.CallbackFields = slices.Clone(s.CallbackFields)
		set = append(set, "callback_fields")
	}
	for _, name := range slices.Sorted(maps.Keys(s.AuthorizeParams)) {
		if _, given := c.AuthorizeParams[name]; !given {
			if c.AuthorizeParams == nil {
				c.AuthorizeParams = make(map[string]string)
			}
			c.AuthorizeParams[name] = s.AuthorizeParams[name]
			set = append(set, "authorize_param "+name)
		}
	}
	c.providerScopes = s.Scopes
	c.logger.Info("options set by the provider catalog", zap.String("provider", c.Provider), zap.Strings("set", set))
	return nil
}
