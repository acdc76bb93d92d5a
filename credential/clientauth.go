package credential

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// Client authentication methods at the token endpoint
// (TokenEndpoint.ClientAuth).
const (
	// ClientAuthSecretBasic sends client_id and client_secret with HTTP
	// Basic (RFC 6749 section 2.3.1).
	ClientAuthSecretBasic = "secret_basic"
	// ClientAuthSecretPost sends them as form fields.
	ClientAuthSecretPost = "secret_post"
	// ClientAuthPrivateKeyJWT sends a client assertion signed with the
	// client's private key, made anew for each token request (RFC 7523
	// section 2.2, OpenID Connect Core section 9).
	ClientAuthPrivateKeyJWT = "private_key_jwt"
	// ClientAuthSecretJWT sends a client assertion like
	// ClientAuthPrivateKeyJWT's, signed HS256 with the client secret
	// (OpenID Connect Core section 9); the secret itself never travels.
	ClientAuthSecretJWT = "client_secret_jwt"
	// ClientAuthTLS is mutual TLS (RFC 8705 section 2): client_id in the
	// form, and the client certificate in the TLS handshake, which is the
	// business of TokenEndpoint.Transport.
	ClientAuthTLS = "tls_client_auth"
	// ClientAuthNone sends client_id alone: a public client (RFC 6749
	// section 2.1), or a jwt_bearer grant that authenticates no client.
	ClientAuthNone = "none"
)

// Form field values of RFC 7523.
const (
	grantTypeJWTBearer  = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// AssertionClaims are the claims of a jwt_bearer grant's assertion that
// the client chooses.
type AssertionClaims struct {
	// Issuer is iss: whoever the provider registered the key for (the
	// connected app's consumer key at Salesforce, the service account's
	// email at Google). Default: the client id.
	Issuer string
	// Subject is sub: the user the tokens act for (Salesforce's username;
	// a user to impersonate with Google's domain-wide delegation). Left
	// out when empty.
	Subject string
	// Audience is aud: the authorization server (https://login.salesforce.com,
	// https://oauth2.googleapis.com/token). Default: the token URL.
	Audience string
}

// clientAuth is the client authentication method in effect: ClientAuth,
// or ClientAuthSecretBasic when that is empty.
func (c *tokenClient) clientAuth() string {
	return cmp.Or(c.ClientAuth, ClientAuthSecretBasic)
}

// oauth2Client is what x/oauth2 is told of the client: its auth style, and
// the id and secret it sends that way. Only the secret methods send the
// secret; the others send client_id as a form field, except a jwt_bearer
// grant that authenticates no client, which sends no client_id at all
// (RFC 7523 section 2.1 needs none).
func (c *tokenClient) oauth2Client() (style oauth2.AuthStyle, id, secret string) {
	switch c.clientAuth() {
	case ClientAuthSecretBasic:
		return oauth2.AuthStyleInHeader, c.ClientID, c.ClientSecret
	case ClientAuthSecretPost:
		return oauth2.AuthStyleInParams, c.ClientID, c.ClientSecret
	case ClientAuthNone:
		if c.Grant == GrantJWTBearer {
			return oauth2.AuthStyleInParams, "", ""
		}
	}
	return oauth2.AuthStyleInParams, c.ClientID, ""
}

// endpointParams are the clientcredentials package's EndpointParams for
// the grant: the configured params, and for jwt_bearer its grant_type,
// which that package lets EndpointParams replace.
func (c *tokenClient) endpointParams() url.Values {
	if c.Grant != GrantJWTBearer {
		return c.Params
	}
	p := maps.Clone(c.Params)
	if p == nil {
		p = url.Values{}
	}
	p.Set("grant_type", grantTypeJWTBearer)
	return p
}

// signedFields are the form fields a token request needs made anew each
// time it is sent: the jwt_bearer grant's assertion and the
// private_key_jwt or client_secret_jwt client assertion, each with a jti
// of its own.
func (c *tokenClient) signedFields() (url.Values, error) {
	fields := url.Values{}
	if (c.Grant == GrantJWTBearer || c.clientAuth() == ClientAuthPrivateKeyJWT) && c.Signer == nil {
		return nil, errors.New("the jwt_bearer grant and private_key_jwt need a Signer")
	}
	now := c.now()
	if c.Grant == GrantJWTBearer {
		a := c.Assertion
		claims, err := assertionClaims(cmp.Or(a.Issuer, c.ClientID), a.Subject, cmp.Or(a.Audience, c.URL), now)
		if err != nil {
			return nil, err
		}
		var extra map[string]any
		if len(c.Scopes) > 0 {
			// Google reads the scopes from the assertion; RFC 7523 servers
			// from the form, where clientcredentials puts them too.
			extra = map[string]any{"scope": strings.Join(c.Scopes, " ")}
		}
		assertion, err := c.Signer.sign(claims, extra)
		if err != nil {
			return nil, fmt.Errorf("signing the jwt_bearer assertion: %w", err)
		}
		fields.Set("assertion", assertion)
	}
	if method := c.clientAuth(); method == ClientAuthPrivateKeyJWT || method == ClientAuthSecretJWT {
		assertion, err := c.clientAssertion(now)
		if err != nil {
			return nil, err
		}
		fields.Set("client_assertion_type", clientAssertionType)
		fields.Set("client_assertion", assertion)
	}
	return fields, nil
}

// clientAssertion is a new client assertion made at now (RFC 7523 section
// 3, OpenID Connect Core section 9): iss and sub the client id, aud the
// token endpoint (or ClientAssertionAudience), a jti of its own and a
// short exp; signed with Signer for private_key_jwt, and for
// client_secret_jwt HS256 with the client secret.
func (c *tokenClient) clientAssertion(now time.Time) (string, error) {
	signer := c.Signer
	if c.clientAuth() == ClientAuthSecretJWT {
		var err error
		if signer, err = NewSecretSigner(c.ClientSecret); err != nil {
			return "", err
		}
	}
	claims, err := assertionClaims(c.ClientID, c.ClientID, cmp.Or(c.ClientAssertionAudience, c.URL), now)
	if err != nil {
		return "", err
	}
	assertion, err := signer.sign(claims, nil)
	if err != nil {
		return "", fmt.Errorf("signing the client assertion: %w", err)
	}
	return assertion, nil
}

// signingTransport adds to each token request what must be new every time
// it is sent: the assertions of signedFields, and with DPoP a proof (RFC
// 9449 section 5). A token endpoint that answers 400 use_dpop_nonce gets
// the request once more, with its nonce (section 8), new assertions and a
// new proof: no grant was made. One is made per grant; it keeps the
// assertions it sent, so that errors can redact them.
type signingTransport struct {
	base   http.RoundTripper
	client *tokenClient
	sent   []string
}

func (t *signingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	for attempt := 1; ; attempt++ {
		out, err := t.sign(req, attempt)
		if err != nil {
			return nil, err
		}
		resp, err := t.base.RoundTrip(out)
		if err != nil || t.client.DPoP == nil {
			return resp, err
		}
		t.client.DPoP.noteNonce(t.client.URL, resp.Header.Get("DPoP-Nonce"))
		if attempt > 1 || !asksForNonce(resp) {
			return resp, nil
		}
		resp.Body.Close()
	}
}

// sign returns the request of one attempt: req itself (its body for the
// first, a copy from GetBody for the next) with new assertions and proof.
func (t *signingTransport) sign(req *http.Request, attempt int) (*http.Request, error) {
	if attempt > 1 {
		if req.GetBody == nil {
			return nil, errors.New("the token request cannot be sent again: no GetBody")
		}
		body, err := req.GetBody()
		if err != nil {
			return nil, err
		}
		req = req.Clone(req.Context())
		req.Body = body
	}
	fields, err := t.client.signedFields()
	if err != nil {
		closeBody(req)
		return nil, err
	}
	if len(fields) > 0 && req.Body != nil {
		for _, field := range []string{"assertion", "client_assertion"} {
			if v := fields.Get(field); v != "" {
				t.sent = append(t.sent, v)
			}
		}
		// No field of the same name is there to keep: x/oauth2 sets none,
		// and TokenEndpoint.Params may not.
		if req, err = withFormParams(req, fields); err != nil {
			return nil, err
		}
	}
	if t.client.DPoP != nil {
		return t.client.prove(req)
	}
	return req, nil
}
