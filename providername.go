package oauth2upstream

import "github.com/oauth2upstream/caddy-oauth2-upstream/provider"

// providerName names the provider the handler's options come from, which
// the connect page and `caddy oauth2-upstream status` show beside its key
// sets: the title of its catalog entry; "" when it names none.
func (h *Handler) providerName() string {
	if h.Provider == "" {
		return ""
	}
	entry, err := provider.Lookup(h.Provider)
	if err != nil {
		return h.Provider // refused at provisioning; shown as given
	}
	return entry.Title
}
