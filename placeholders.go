package oauth2upstream

import (
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

const placeholderPrefix = "http.oauth2_upstream."

// requestPlaceholders resolves {http.oauth2_upstream.*} for one request:
//
//	key_set              the key set's name
//	generation           the key set's generation
//	expiry               the access token's expiry (RFC 3339), "" if unknown
//	extra.<field>        a field of the token response that extra_fields
//	                     names, such as extra.instance_url
//	extra.<field>.scheme, .host, .hostport
//	                     parts of a URL-valued field; hostport has the
//	                     scheme's default port when the URL names none
//	                     (reverse_proxy refuses placeholders in an upstream
//	                     address that carries a scheme)
//
// Only the token response's extras resolve (keystore.ExtraFields.Extra):
// top-level strings, numbers and booleans that the handler's extra_fields
// allow-list names. Token values must not reach placeholders, nested ones
// included.
type requestPlaceholders struct {
	keySet string
	cred   *credential.Credential // replaced before a replay
	extras keystore.ExtraFields   // the handler's extra_fields
}

func (p *requestPlaceholders) lookup(key string) (any, bool) {
	rest, ok := strings.CutPrefix(key, placeholderPrefix)
	if !ok {
		return nil, false
	}
	switch rest {
	case "key_set":
		return p.keySet, true
	case "generation":
		return p.cred.KeySet.Generation, true
	case "expiry":
		if p.cred.KeySet.Expiry.IsZero() {
			return "", true
		}
		return p.cred.KeySet.Expiry.Format(time.RFC3339), true
	}
	field, ok := strings.CutPrefix(rest, "extra.")
	if !ok {
		return nil, false
	}
	ks := p.cred.KeySet
	if v, ok := p.extras.ExtraOf(ks, field); ok {
		return v, true
	}
	for _, part := range [...]string{"scheme", "hostport", "host"} {
		base, ok := strings.CutSuffix(field, "."+part)
		if !ok {
			continue
		}
		v, ok := p.extras.ExtraOf(ks, base)
		if !ok {
			return nil, false
		}
		return urlPart(v, part), true
	}
	return nil, false
}

// urlPart returns one part of a URL; "" when the value is not a URL.
func urlPart(raw, part string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	switch part {
	case "scheme":
		return u.Scheme
	case "host":
		return u.Hostname()
	}
	if u.Port() != "" {
		return u.Host
	}
	port := "443"
	if u.Scheme == "http" {
		port = "80"
	}
	return net.JoinHostPort(u.Hostname(), port)
}
