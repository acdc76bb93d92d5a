package credential

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// The headers of the Standard Webhooks specification 1.0.0 ("Webhook
// headers",
// https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md)
// that every delivery carries, so that a receiver verifies it with any of
// the specification's libraries, or the check described below, rather
// than with a scheme of this project's own:
//
//	webhook-id:        the event's id, the same on every attempt (newEventID)
//	webhook-timestamp: the attempt's time, Unix seconds
//	webhook-signature: v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>
//
// The key is the base64-decoded part of notify_secret's whsec_<base64>. A
// receiver recomputes the HMAC over the raw body it read, compares in
// constant time, refuses a timestamp too far from its clock (the
// libraries: five minutes) and an id it already processed.
const (
	WebhookIDHeader        = "Webhook-Id"
	WebhookTimestampHeader = "Webhook-Timestamp"
	WebhookSignatureHeader = "Webhook-Signature"
)

// Bounds of the signing secret's key: the specification's "Signing secret"
// row for symmetric signatures says "At least 24 bytes (192 bits, 512
// maximum)".
const (
	webhookSecretPrefix = "whsec_"
	minWebhookKey       = 24
	maxWebhookKey       = 64
)

// errWebhookSecret is why a notify_secret was refused; it never holds the
// value.
var errWebhookSecret = errors.New("notify_secret must be a Standard Webhooks signing secret, whsec_ followed by the base64 " +
	"of 24 to 64 random bytes; make one with: echo \"whsec_$(openssl rand -base64 32)\"")

// webhookKey returns the HMAC key of a whsec_<base64> secret. Any other
// form is refused, a raw passphrase included: a receiver's Standard
// Webhooks library decodes the secret it is given as base64 after the
// prefix, so a secret of another form would be keyed differently on each
// side, and a short passphrase is no key.
func webhookKey(secret string) ([]byte, error) {
	encoded, ok := strings.CutPrefix(secret, webhookSecretPrefix)
	if !ok {
		return nil, errWebhookSecret
	}
	key, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil || len(key) < minWebhookKey || len(key) > maxWebhookKey {
		return nil, errWebhookSecret
	}
	return key, nil
}

// NotifyConfig is where a Notifier sends changes, what it sends and how it
// signs them.
type NotifyConfig struct {
	// URL receives the POSTs: https, or http to a loopback host.
	URL string
	// Secret keys the signature of every delivery
	// (WebhookSignatureHeader): whsec_<base64 of 24 to 64 bytes>, the
	// Standard Webhooks form. Required: a receiver must be able to tell
	// the sidecar's events from anyone else's.
	Secret string
	// IncludeTokens adds the whole token response under "token", for
	// platforms that persist the keys themselves. Without it no token
	// value leaves in a notification.
	IncludeTokens bool
	// ExtraFields names the token response fields sent under "extra"
	// (the handler's extra_fields); the zero value is the default list.
	ExtraFields keystore.ExtraFields
	// Header is added to every delivery (an Authorization the receiver
	// wants, say); it may not hold the headers the notifier or the HTTP
	// client set themselves (Validate refuses them).
	Header http.Header
}

// reservedNotifyHeaders are the headers that frame or authenticate a
// delivery: the notifier sets them, or Go's HTTP client does from the
// request itself, so a configured value would be ignored or would break the
// signature's meaning.
var reservedNotifyHeaders = map[string]bool{
	"Content-Type": true, "Content-Length": true, "Host": true,
	"Transfer-Encoding": true, "Trailer": true, "Connection": true,
	WebhookIDHeader: true, WebhookTimestampHeader: true, WebhookSignatureHeader: true,
}

// validateNotifyHeader accepts a header name that may be added to
// deliveries: a valid field name that the notifier does not set itself.
func validateNotifyHeader(name string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("notify_header %q: not a valid header field name", name)
	}
	if reservedNotifyHeaders[http.CanonicalHeaderKey(name)] {
		return fmt.Errorf("notify_header %s: set by the notifier itself, it cannot be overridden", name)
	}
	return nil
}

// Validate checks the configuration, naming the Caddyfile option at fault.
// Header values may hold credentials: errors never show them.
func (c NotifyConfig) Validate() error {
	if err := validateNotifyURL(c.URL); err != nil {
		return err
	}
	if c.Secret == "" {
		return fmt.Errorf("notify_secret is required with notify: every delivery is signed")
	}
	if _, err := webhookKey(c.Secret); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(c.Header)) {
		if err := validateNotifyHeader(name); err != nil {
			return err
		}
		for _, v := range c.Header[name] {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("notify_header %s: the value is not a valid header field value", name)
			}
		}
	}
	return nil
}

// validateNotifyURL accepts an https URL, or http to a loopback host: the
// request carries the notify_header values, and the tokens when they are
// included.
func validateNotifyURL(raw string) error {
	return CheckSecretsURL("notify", raw, false, "the notification carries its headers, and the tokens when included", "")
}
