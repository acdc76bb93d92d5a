package oauth2upstream

import (
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// NotifyOptions are the options of change notifications. Handler embeds
// them, so their JSON fields sit beside the handler's own.
type NotifyOptions struct {
	// Notify is a URL that receives every key set change this handler
	// stores, as a POSTed JSON {"type", "name", "generation",
	// "updated_at", "expiry", "extra"} (extra: the fields ExtraFields
	// names) holding no token value (unless
	// NotifyIncludeTokens), with the Standard Webhooks headers
	// (webhook-id, webhook-timestamp, webhook-signature keyed with
	// NotifySecret), in order per key set, retried with backoff. It must
	// be https unless its host is loopback. Placeholders such as
	// {env.NOTIFY_URL} are replaced when the handler starts.
	Notify string `json:"notify,omitempty"`

	// NotifySecret keys the HMAC-SHA256 signature of every notification
	// (the webhook-signature header of the Standard Webhooks
	// specification); required with Notify. It is a Standard Webhooks
	// signing secret, whsec_ and the base64 of 24 to 64 random bytes
	// (echo "whsec_$(openssl rand -base64 32)"); any other form is refused,
	// since a receiver's Standard Webhooks library would key it otherwise.
	// Give it as a placeholder, usually {env.NOTIFY_SECRET}, replaced when
	// the handler starts: a literal value shows in Caddy's config,
	// /config/ of the admin API included.
	NotifySecret string `json:"notify_secret,omitempty"`

	// NotifyIncludeTokens adds the whole token response, token values
	// included, under "token" in every notification, for platforms that
	// persist the keys themselves. Default: false, no token value is sent.
	NotifyIncludeTokens bool `json:"notify_include_tokens,omitempty"`

	// NotifyHeaders are added to every notification request (an
	// Authorization the receiver checks, say). Content-Type,
	// Content-Length, Host, Transfer-Encoding, Trailer, Connection and
	// the webhook-id, webhook-timestamp and webhook-signature headers
	// cannot be set. Placeholders in the values
	// (usually {env.*}) are replaced when the handler starts.
	NotifyHeaders http.Header `json:"notify_headers,omitempty"`
}

// replacePlaceholders resolves placeholders (usually {env.*}) in the URL,
// the secret and the header values, when the handler starts.
func (n *NotifyOptions) replacePlaceholders(repl *caddy.Replacer) {
	n.Notify = repl.ReplaceKnown(n.Notify, "")
	n.NotifySecret = repl.ReplaceKnown(n.NotifySecret, "")
	for _, values := range n.NotifyHeaders {
		for i := range values {
			values[i] = repl.ReplaceKnown(values[i], "")
		}
	}
}

// validate checks notify and the options that only mean something
// with it.
func (n *NotifyOptions) validate() error {
	if n.Notify != "" {
		// The extras do not matter here: extra_fields is checked apart.
		return n.config(keystore.ExtraFields{}).Validate()
	}
	if n.NotifySecret != "" || n.NotifyIncludeTokens || len(n.NotifyHeaders) > 0 {
		return fmt.Errorf("notify_secret, notify_include_tokens and notify_header configure notify, which is not set")
	}
	return nil
}

// config is the change notifier the options describe, sending the extras
// that extras allows; its URL is empty without notify.
func (n *NotifyOptions) config(extras keystore.ExtraFields) credential.NotifyConfig {
	return credential.NotifyConfig{URL: n.Notify, Secret: n.NotifySecret, IncludeTokens: n.NotifyIncludeTokens,
		ExtraFields: extras, Header: n.NotifyHeaders}
}
