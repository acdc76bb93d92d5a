// Package discovery reads an authorization server's metadata from its
// issuer identifier: the OpenID Provider Configuration
// (https://openid.net/specs/openid-connect-discovery-1_0.html#ProviderConfig)
// or the OAuth 2.0 Authorization Server Metadata (RFC 8414,
// https://www.rfc-editor.org/rfc/rfc8414#section-3), checked as both
// require, and keeps what it read for a while (Cache), so that the
// handlers of a config, and a reload soon after, read it once. It imports
// no Caddy: the oauth2_upstream handler and the connect page configure
// themselves from what it returns.
package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// Well-known URI suffixes of the metadata document.
const (
	// openIDConfiguration is OpenID Connect Discovery 1.0 section 4's,
	// appended to the issuer (any terminating / removed first).
	openIDConfiguration = "/.well-known/openid-configuration"
	// oauthAuthorizationServer is RFC 8414 section 3's, inserted between
	// the issuer's host and its path.
	oauthAuthorizationServer = "/.well-known/oauth-authorization-server"
)

// DefaultTimeout bounds reading an issuer's metadata, both locations
// included, unless a module configures another bound.
const DefaultTimeout = 10 * time.Second

// MaxDocumentBytes bounds a metadata document: a provider's is a few KiB
// (accounts.google.com's about 1.5), so a larger answer is not one.
const MaxDocumentBytes = 1 << 20

// ErrUnreachable marks a failure to read a metadata document at all: the
// issuer could not be reached, timed out, redirected, or had none at either
// well-known location. A document that was read and is wrong (an issuer of
// another server, not JSON) is not unreachable.
var ErrUnreachable = errors.New("metadata unreachable")

// Metadata is what the sidecar reads of an authorization server's metadata
// (RFC 8414 section 2; the names OpenID Connect Discovery 1.0 section 3
// shares).
type Metadata struct {
	// Issuer is the server's issuer identifier: exactly the configured one.
	Issuer string `json:"issuer"`
	// AuthorizationEndpoint is the authorization endpoint; "" when the
	// document names none.
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	// TokenEndpoint is the token endpoint; "" when the document names none.
	TokenEndpoint string `json:"token_endpoint"`
	// TokenEndpointAuthMethods are the client authentication methods the
	// token endpoint accepts, by their registered names (client_secret_basic,
	// private_key_jwt, ...); nil when the document lists none, which RFC
	// 8414 section 2 says means client_secret_basic.
	TokenEndpointAuthMethods []string `json:"token_endpoint_auth_methods_supported"`
	// DPoPSigningAlgs are the JWS algorithms the server accepts for DPoP
	// proofs (RFC 9449 section 5.1); nil when the document lists none.
	DPoPSigningAlgs []string `json:"dpop_signing_alg_values_supported"`
	// AuthorizationResponseIssSupported says the server sends iss in its
	// redirects back (RFC 9207 section 3); false when the document omits it.
	AuthorizationResponseIssSupported bool `json:"authorization_response_iss_parameter_supported"`
	// Location is where the document was read.
	Location string `json:"-"`
}

// CheckIssuer checks an issuer identifier before anything is fetched from
// it: an absolute https URL (http only on a loopback host) with a host and
// no credentials, query or fragment (RFC 8414 section 2). The document it
// names says where the client secret and refresh tokens are sent.
func CheckIssuer(issuer string) error {
	if err := credential.CheckSecretsURL("issuer", issuer, false,
		"its metadata names where the client secret and refresh tokens are sent", ""); err != nil {
		return err
	}
	u, _ := url.Parse(issuer) // CheckSecretsURL parsed it
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return fmt.Errorf("issuer %q: must have no query or fragment (RFC 8414 section 2)", issuer)
	}
	return nil
}

// Locations are the URLs a metadata document of issuer is read from, in
// the order they are tried: OpenID Connect Discovery's, which most
// providers serve (accounts.google.com, login.microsoftonline.com), then
// RFC 8414's. For an issuer with a path, https://as.example.com/tenant1,
// they are https://as.example.com/tenant1/.well-known/openid-configuration
// (appended: OpenID Connect Discovery 1.0 section 4.1) and
// https://as.example.com/.well-known/oauth-authorization-server/tenant1
// (inserted between host and path: RFC 8414 section 3.1). A terminating /
// of the path is removed first, as section 4.1 says.
func Locations(issuer string) ([]string, error) {
	u, err := url.Parse(issuer)
	if err != nil {
		return nil, fmt.Errorf("issuer %q: %w", issuer, err)
	}
	path := strings.TrimSuffix(u.EscapedPath(), "/")
	origin := u.Scheme + "://" + u.Host
	return []string{origin + path + openIDConfiguration, origin + oauthAuthorizationServer + path}, nil
}

// Fetch reads the metadata of issuer with client, which must follow no
// redirects (NewClient): at each of Locations in turn, going on to the next
// only when one answers 404. The document's issuer must be exactly issuer
// (RFC 8414 section 3.3, OpenID Connect Discovery 1.0 section 4.3): the
// metadata of another server, which names its endpoints, is refused.
// Failures to read any document wrap ErrUnreachable.
func Fetch(ctx context.Context, client *http.Client, issuer string) (*Metadata, error) {
	if err := CheckIssuer(issuer); err != nil {
		return nil, err
	}
	locations, err := Locations(issuer)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, location := range locations {
		body, status, err := get(ctx, client, location)
		if err != nil {
			return nil, err
		}
		if status == http.StatusNotFound {
			missing = append(missing, location)
			continue
		}
		return parse(issuer, location, body)
	}
	return nil, fmt.Errorf("%w: no metadata document at %s (404)", ErrUnreachable, strings.Join(missing, " nor "))
}

// get reads location: its body when it answers 200, its status when it
// answers 404; any other answer, and a failure to get one, is an error
// wrapping ErrUnreachable.
func get(ctx context.Context, client *http.Client, location string) (body []byte, status int, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, location, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("metadata %s: %w", location, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("metadata %s: %w: %w", location, ErrUnreachable, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, resp.StatusCode, nil
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		// Followed, a redirect could send the client to another server's
		// document; the issuer names its own location.
		return nil, 0, fmt.Errorf("metadata %s: %w: answered %d, a redirect, which is not followed", location, ErrUnreachable, resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return nil, 0, fmt.Errorf("metadata %s: %w: answered %d", location, ErrUnreachable, resp.StatusCode)
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, MaxDocumentBytes+1))
	if err != nil {
		return nil, 0, fmt.Errorf("metadata %s: %w: reading the body: %w", location, ErrUnreachable, err)
	}
	if len(body) > MaxDocumentBytes {
		return nil, 0, fmt.Errorf("metadata %s: larger than %d bytes", location, MaxDocumentBytes)
	}
	return body, resp.StatusCode, nil
}

// parse decodes the document read at location and checks it names issuer.
func parse(issuer, location string, body []byte) (*Metadata, error) {
	var md Metadata
	if err := json.Unmarshal(body, &md); err != nil {
		return nil, fmt.Errorf("metadata %s: not a JSON object of metadata: %w", location, err)
	}
	if md.Issuer != issuer {
		return nil, fmt.Errorf("metadata %s: its issuer is %q, not the configured %q; they must be identical (RFC 8414 section 3.3), "+
			"or the document may be another server's", location, md.Issuer, issuer)
	}
	md.Location = location
	return &md, nil
}

// NewClient returns the HTTP client that Fetch needs: it follows no
// redirects, so a redirect answers as itself.
func NewClient() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// registeredAuthMethods are the names that the IANA "OAuth Token Endpoint
// Authentication Methods" registry
// (https://www.iana.org/assignments/oauth-parameters/oauth-parameters.xhtml#token-endpoint-auth-method)
// gives the credential package's client authentication methods.
var registeredAuthMethods = map[string]string{
	credential.ClientAuthSecretBasic:   "client_secret_basic",
	credential.ClientAuthSecretPost:    "client_secret_post",
	credential.ClientAuthPrivateKeyJWT: "private_key_jwt",
	credential.ClientAuthTLS:           "tls_client_auth",
	credential.ClientAuthNone:          "none",
}

// ChooseClientAuth returns the first of candidates (credential.ClientAuth*
// methods, the one preferred first) that the token endpoint accepts, and
// false when it accepts none of them. A document that lists no methods
// (RFC 8414 section 2 then means client_secret_basic) leaves the first
// candidate, the handler's own default: no refusal is made on what the
// server did not say.
func (m *Metadata) ChooseClientAuth(candidates []string) (string, bool) {
	if len(candidates) == 0 {
		return "", false
	}
	if m.TokenEndpointAuthMethods == nil {
		return candidates[0], true
	}
	for _, method := range candidates {
		if name, ok := registeredAuthMethods[method]; ok && slices.Contains(m.TokenEndpointAuthMethods, name) {
			return method, true
		}
	}
	return "", false
}

// SupportsDPoPAlg reports whether the server accepts DPoP proofs signed
// with alg (RFC 9449 section 5.1). A document that lists no algorithms
// says nothing of them, so any is taken as accepted.
func (m *Metadata) SupportsDPoPAlg(alg string) bool {
	return m.DPoPSigningAlgs == nil || slices.Contains(m.DPoPSigningAlgs, alg)
}
