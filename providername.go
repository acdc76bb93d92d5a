package oauth2upstream

// providerName names the provider the handler's options come from, which
// the connect page and `caddy oauth2-upstream status` show beside its key
// sets; "" when it names none.
func (h *Handler) providerName() string { return "" }
