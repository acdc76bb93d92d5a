package oauth2upstream

import (
	"maps"
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/provider"
)

// ProviderOptions name an entry of the provider catalog (provider/
// catalog.json; README, "Providers"), whose settings stand in for the
// options left unset. Handler embeds them, so their JSON fields sit beside
// the handler's own.
type ProviderOptions struct {
	// Provider names a catalog entry (microsoft, salesforce, google, ...):
	// when the handler starts, its token URL, client authentication,
	// scopes, token request parameters, refresh mode, header scheme and
	// extra fields fill the options that are not set. An option that is
	// set always wins: a scopes list replaces the entry's, a param of the
	// same name replaces the entry's, and extra_fields replaces the
	// default list and the entry's additions. Default: none.
	Provider string `json:"provider,omitempty"`

	// ProviderParams are the entry's parameters by name (tenant, domain,
	// region, ...), the Caddyfile's key=value arguments. Values are
	// checked against an allow-list of characters, so that a value cannot
	// add a path, a query or another host to the URLs it lands in.
	// Placeholders ({env.*}) are replaced when the handler starts.
	// Parameters left out take the entry's defaults; one without a
	// default is required. Default: none.
	ProviderParams map[string]string `json:"provider_params,omitempty"`
}

// unmarshalProvider reads `provider <name> [<key>=<value>...]`.
func (o *ProviderOptions) unmarshalProvider(d *caddyfile.Dispenser) error {
	if o.Provider != "" {
		return d.Errf("provider given twice")
	}
	name, params, err := provider.ParseOption(d.RemainingArgs())
	if err != nil {
		return d.Err(err.Error())
	}
	o.Provider, o.ProviderParams = name, params
	return nil
}

// applyProvider fills the options left unset from the provider's entry,
// its parameters' placeholders replaced first, and logs what it set. It
// runs before defaults are set, so that an unset option is still empty.
func (h *Handler) applyProvider(repl *caddy.Replacer) error {
	s, ok, err := provider.Resolve(h.Provider, h.ProviderParams, func(v string) string { return repl.ReplaceKnown(v, "") })
	if !ok {
		return err
	}
	set := h.fillFromProvider(s)
	h.logger.Info("options set by the provider catalog", zap.String("provider", h.Provider), zap.Strings("set", set))
	return nil
}

// fillFromProvider sets, from s, the options left unset, and returns the
// names of those it set.
func (h *Handler) fillFromProvider(s provider.Settings) []string {
	var set []string
	fill := func(name string, target *string, value string) {
		if *target == "" && value != "" {
			*target = value
			set = append(set, name)
		}
	}
	fill("token_url", &h.TokenURL, s.TokenURL)
	if h.AuthStyle == "" {
		fill("client_auth", &h.ClientAuth, s.ClientAuth)
	}
	fill("refresh", &h.Refresh, s.RefreshMode)
	fill("header_scheme", &h.HeaderScheme, s.HeaderScheme)
	if len(h.Scopes) == 0 && len(s.Scopes) > 0 {
		h.Scopes = slices.Clone(s.Scopes)
		set = append(set, "scopes")
	}
	for _, name := range slices.Sorted(maps.Keys(s.TokenParams)) {
		if _, given := h.Params[name]; !given {
			if h.Params == nil {
				h.Params = make(map[string][]string)
			}
			h.Params[name] = []string{s.TokenParams[name]}
			set = append(set, "param "+name)
		}
	}
	if len(h.ExtraFields) == 0 && len(s.ExtraFields)+len(s.CallbackFields) > 0 {
		// The entry adds to the default list: a list replaces the default.
		// The values its connect page keeps from the redirect back (Intuit's
		// realmId) are exposed too: they are what the API's paths need.
		fields := append(keystore.DefaultExtraFields(), s.ExtraFields...)
		fields = append(fields, s.CallbackFields...)
		slices.Sort(fields)
		h.ExtraFields = slices.Compact(fields)
		set = append(set, "extra_fields")
	}
	return set
}
