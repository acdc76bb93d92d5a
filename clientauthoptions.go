package oauth2upstream

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// clientAuthMethods are the values of client_auth.
var clientAuthMethods = []string{
	credential.ClientAuthSecretBasic, credential.ClientAuthSecretPost, credential.ClientAuthSecretJWT,
	credential.ClientAuthPrivateKeyJWT, credential.ClientAuthTLS, credential.ClientAuthNone,
}

// signingAlgs are the values of signing_alg.
var signingAlgs = []string{credential.AlgRS256, credential.AlgPS256, credential.AlgES256}

// ClientAuthOptions say how the handler proves at the token endpoint which
// client it is, and sign the assertion of the jwt_bearer grant. Handler
// embeds them, so their JSON fields sit beside the handler's own.
type ClientAuthOptions struct {
	// ClientAuth is how the client authenticates at the token endpoint:
	// "secret_basic" (client_id and client_secret with HTTP Basic, RFC 6749
	// section 2.3.1), "secret_post" (as form fields), "client_secret_jwt"
	// (a client assertion signed HS256 with client_secret, which must have
	// 32 bytes at least and never travels itself: OpenID Connect Core
	// section 9), "private_key_jwt" (a client assertion signed with
	// SigningKey; both new for every token request: RFC 7523 section 2.2),
	// "tls_client_auth" (ClientCertificate in the TLS
	// handshake, RFC 8705 section 2) or "none" (client_id alone: a public
	// client; with the jwt_bearer grant, not even that). AuthStyle "basic"
	// and "post" are aliases of the first two. Never auto-detected: a grant
	// resent with another method spends a rotating refresh token twice.
	// Default: secret_basic; none for the jwt_bearer grant without a
	// client_secret.
	ClientAuth string `json:"client_auth,omitempty"`

	// SigningKey is the PEM private key (RSA of at least 2048 bits, or EC
	// P-256) that signs private_key_jwt client assertions and jwt_bearer
	// assertions: a file's path, or the PEM itself, usually given as
	// {env.CLIENT_KEY}. Placeholders are replaced when the handler starts.
	SigningKey string `json:"signing_key,omitempty"`

	// SigningAlg is the JWS algorithm of the assertions: RS256, PS256 or
	// ES256. Default: RS256 for an RSA key, ES256 for an EC key.
	SigningAlg string `json:"signing_alg,omitempty"`

	// SigningKeyID is the assertions' kid header, naming the key among the
	// client's registered keys. Default: no kid.
	SigningKeyID string `json:"signing_key_id,omitempty"`

	// SigningCertificate is SigningKey's PEM certificate (the leaf first,
	// if a chain), a file's path or the PEM itself, for a provider that
	// knows the key by its certificate: every assertion then names it by
	// its thumbprint in the header SigningCertificateThumbprint says, as
	// Microsoft Entra's certificate credentials require. A certificate of
	// another key is refused when the handler starts. Default: none.
	SigningCertificate string `json:"signing_certificate,omitempty"`

	// SigningCertificateThumbprint is the assertion header that names
	// SigningCertificate: "x5t#S256" (its SHA-256 thumbprint, RFC 7515
	// section 4.1.8; Entra's guidance, with signing_alg PS256), "x5t"
	// (SHA-1, section 4.1.7; Entra's earlier guidance, with RS256, for a
	// provider that reads no other) or "both". Default: x5t#S256.
	SigningCertificateThumbprint string `json:"signing_certificate_thumbprint,omitempty"`

	// ClientAssertionAudience is the aud claim of private_key_jwt and
	// client_secret_jwt client assertions, for providers that want their
	// issuer there instead of the token endpoint. Default: token_url.
	ClientAssertionAudience string `json:"client_assertion_audience,omitempty"`

	// AssertionIssuer is the iss claim of the jwt_bearer grant's assertion:
	// Salesforce's consumer key, Google's service account email. Default:
	// client_id.
	AssertionIssuer string `json:"assertion_issuer,omitempty"`

	// AssertionSubject is the sub claim of the jwt_bearer grant's
	// assertion: the user the tokens act for (Salesforce's username).
	// Default: none (Google's service accounts act for themselves).
	AssertionSubject string `json:"assertion_subject,omitempty"`

	// AssertionAudience is the aud claim of the jwt_bearer grant's
	// assertion (https://login.salesforce.com). Default: token_url.
	AssertionAudience string `json:"assertion_audience,omitempty"`

	// ClientCertificate is the client's PEM certificate (chain), a file's
	// path or the PEM itself, presented in the TLS handshake with the
	// token endpoint: tls_client_auth authenticates with it, and a provider
	// that binds tokens to it (RFC 8705 section 3, cnf x5t#S256) needs the
	// same certificate on reverse_proxy's transport (README: "Certificate-
	// bound tokens"). Requires ClientCertificateKey.
	ClientCertificate string `json:"client_certificate,omitempty"`

	// ClientCertificateKey is ClientCertificate's PEM private key, a
	// file's path or the PEM itself (usually {env.CLIENT_CERT_KEY}).
	ClientCertificateKey string `json:"client_certificate_key,omitempty"`

	signer         *credential.Signer
	tokenTransport *http.Transport // presents ClientCertificate; nil without one
}

// provisionKeys loads the keys of client authentication and DPoP.
func (h *Handler) provisionKeys(repl *caddy.Replacer) error {
	if err := h.provisionClientAuth(repl); err != nil {
		return err
	}
	return h.provisionDPoP(repl)
}

// provisionClientAuth replaces placeholders in the client authentication
// options and loads their keys and certificate. Errors name the option.
func (o *ClientAuthOptions) provisionClientAuth(repl *caddy.Replacer) error {
	rawKey, rawCert, rawCertKey := o.SigningKey, o.ClientCertificate, o.ClientCertificateKey
	rawSigningCert := o.SigningCertificate
	for _, field := range []*string{&o.SigningKey, &o.SigningKeyID, &o.ClientAssertionAudience, &o.SigningCertificate,
		&o.AssertionIssuer, &o.AssertionSubject, &o.AssertionAudience, &o.ClientCertificate, &o.ClientCertificateKey} {
		*field = repl.ReplaceKnown(*field, "")
	}
	if o.SigningKey != "" {
		if err := o.provisionSigner(rawKey, rawSigningCert); err != nil {
			return err
		}
	}
	if o.ClientCertificate == "" {
		return nil
	}
	cert, err := loadClientCertificate(rawCert, o.ClientCertificate, rawCertKey, o.ClientCertificateKey)
	if err != nil {
		return err
	}
	o.tokenTransport = http.DefaultTransport.(*http.Transport).Clone()
	o.tokenTransport.TLSClientConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	return nil
}

// provisionSigner loads signing_key, and signing_certificate when it is
// set; raw are the two options as configured, for errors.
func (o *ClientAuthOptions) provisionSigner(rawKey, rawCert string) error {
	key, err := loadPrivateKey("signing_key", rawKey, o.SigningKey)
	if err != nil {
		return err
	}
	// The key is checked alone first, so that its errors name signing_key.
	if o.signer, err = credential.NewSigner(key, o.SigningAlg, o.SigningKeyID); err != nil {
		return fmt.Errorf("signing_key: %w (signing_alg %q)", err, o.SigningAlg)
	}
	if o.SigningCertificate == "" {
		return nil
	}
	_, leaf, err := loadCertificates("signing_certificate", rawCert, o.SigningCertificate)
	if err != nil {
		return err
	}
	o.signer, err = credential.NewCertificateSigner(key, o.SigningAlg, o.SigningKeyID, leaf, o.SigningCertificateThumbprint)
	if err != nil {
		return fmt.Errorf("signing_certificate: %w", err)
	}
	return nil
}

// cleanupClientAuth closes the idle connections of the token endpoint's
// transport, when the handler has its own.
func (o *ClientAuthOptions) cleanupClientAuth() {
	if o.tokenTransport != nil {
		o.tokenTransport.CloseIdleConnections()
	}
}

// clientAuth is the client authentication method in effect: client_auth,
// else auth_style's alias, else the default.
func (h *Handler) clientAuth() string {
	switch {
	case h.ClientAuth != "":
		return h.ClientAuth
	case h.AuthStyle == authStylePost:
		return credential.ClientAuthSecretPost
	case h.AuthStyle == "" && h.Grant == credential.GrantJWTBearer && h.ClientSecret == "":
		return credential.ClientAuthNone
	}
	return credential.ClientAuthSecretBasic
}

// configureClientAuth sets the client authentication of endpoint.
func (h *Handler) configureClientAuth(endpoint *credential.TokenEndpoint) {
	o := &h.ClientAuthOptions
	endpoint.ClientAuth = h.clientAuth()
	endpoint.Signer = o.signer
	endpoint.DPoP = h.prover
	endpoint.ClientAssertionAudience = o.ClientAssertionAudience
	endpoint.Assertion = credential.AssertionClaims{Issuer: o.AssertionIssuer, Subject: o.AssertionSubject, Audience: o.AssertionAudience}
	if o.tokenTransport != nil {
		endpoint.Transport = o.tokenTransport
	}
}

// validateKeyOptions checks that the client authentication options fit
// each other and the grant, and the DPoP options.
func (h *Handler) validateKeyOptions() error {
	o := &h.ClientAuthOptions
	method := h.clientAuth()
	switch {
	case h.AuthStyle != "" && h.AuthStyle != authStyleBasic && h.AuthStyle != authStylePost:
		return fmt.Errorf("auth_style %q: must be %q or %q (or use client_auth)", h.AuthStyle, authStyleBasic, authStylePost)
	case !slices.Contains(clientAuthMethods, method):
		return fmt.Errorf("client_auth %q: must be one of %s", method, strings.Join(clientAuthMethods, ", "))
	case h.AuthStyle != "" && h.ClientAuth != "" && h.ClientAuth != "secret_"+h.AuthStyle:
		return fmt.Errorf("auth_style %s and client_auth %s disagree; auth_style is an alias of client_auth secret_basic|secret_post: keep client_auth", h.AuthStyle, h.ClientAuth)
	case h.ClientSecret != "" && !usesSecret(method):
		return fmt.Errorf("client_secret is never sent with client_auth %s; remove it", method)
	case o.SigningAlg != "" && !slices.Contains(signingAlgs, o.SigningAlg):
		return fmt.Errorf("signing_alg %q: must be one of %s", o.SigningAlg, strings.Join(signingAlgs, ", "))
	case (o.ClientCertificate == "") != (o.ClientCertificateKey == ""):
		return fmt.Errorf("client_certificate and client_certificate_key go together (the certificate and its private key)")
	case method == credential.ClientAuthTLS && o.ClientCertificate == "":
		return fmt.Errorf("client_auth tls_client_auth needs client_certificate <cert> <key>")
	}
	if err := o.validateSecretJWT(method, h.ClientSecret); err != nil {
		return err
	}
	signs := method == credential.ClientAuthPrivateKeyJWT || h.Grant == credential.GrantJWTBearer
	switch {
	case signs && o.SigningKey == "":
		return fmt.Errorf("signing_key is required with client_auth private_key_jwt and grant jwt_bearer: it signs their assertions")
	case !signs && (o.SigningKey != "" || o.SigningAlg != "" || o.SigningKeyID != ""):
		return fmt.Errorf("signing_key, signing_alg and signing_key_id sign the assertions of client_auth private_key_jwt and grant jwt_bearer; neither is configured")
	case o.ClientAssertionAudience != "" && method != credential.ClientAuthPrivateKeyJWT && method != credential.ClientAuthSecretJWT:
		return fmt.Errorf("client_assertion_audience is for client_auth private_key_jwt and client_secret_jwt")
	case o.SigningCertificate != "" && o.SigningKey == "":
		return fmt.Errorf("signing_certificate is signing_key's certificate; set signing_key too")
	case o.SigningCertificateThumbprint != "" && o.SigningCertificate == "":
		return fmt.Errorf("signing_certificate_thumbprint names signing_certificate in the assertions; set signing_certificate too")
	case o.SigningCertificateThumbprint != "" && !slices.Contains(credential.Thumbprints, o.SigningCertificateThumbprint):
		return fmt.Errorf("signing_certificate_thumbprint %q: must be one of %s", o.SigningCertificateThumbprint, strings.Join(credential.Thumbprints, ", "))
	case h.Grant != credential.GrantJWTBearer && (o.AssertionIssuer != "" || o.AssertionSubject != "" || o.AssertionAudience != ""):
		return fmt.Errorf("assertion_issuer, assertion_subject and assertion_audience are claims of grant jwt_bearer's assertion")
	}
	return h.validateDPoP(h.HeaderName, h.HeaderScheme, len(h.EncryptionKeys) > 0)
}

// usesSecret reports whether client authentication method uses the
// client_secret: sends it, or signs with it.
func usesSecret(method string) bool {
	return method == credential.ClientAuthSecretBasic || method == credential.ClientAuthSecretPost ||
		method == credential.ClientAuthSecretJWT
}

// validateSecretJWT checks that client_auth client_secret_jwt has a
// client_secret that HS256 may be keyed with: a shorter one is refused,
// not warned about, since RFC 7518 section 3.2 says MUST
// (credential.MinSecretJWTBytes).
func (o *ClientAuthOptions) validateSecretJWT(method, secret string) error {
	if method != credential.ClientAuthSecretJWT {
		return nil
	}
	if secret == "" {
		return fmt.Errorf("client_auth client_secret_jwt signs its assertions with client_secret; set it")
	}
	if _, err := credential.NewSecretSigner(secret); err != nil {
		return fmt.Errorf("client_secret: %w; client_auth client_secret_jwt cannot sign with it (ask the provider for a longer secret, or use secret_basic)", err)
	}
	return nil
}

// unmarshalKeyOption reads the Caddyfile options of keys, assertions and
// certificates; any other option is unrecognized. Syntax:
//
//	client_auth     secret_basic|secret_post|client_secret_jwt|private_key_jwt|tls_client_auth|none
//	signing_key     <file|pem>
//	signing_alg     RS256|PS256|ES256
//	signing_key_id  <kid>
//	signing_certificate <file|pem>
//	signing_certificate_thumbprint x5t#S256|x5t|both
//	client_assertion_audience <aud>
//	client_certificate <file|pem> <key file|pem>
//	assertion_issuer   <iss>
//	assertion_subject  <sub>
//	assertion_audience <aud>
//	dpop <upstream url> {
//		key <file|pem>
//	}
func (h *Handler) unmarshalKeyOption(d *caddyfile.Dispenser, option string) error {
	if ok, err := h.unmarshalClientAuthOption(d, option); ok {
		return err
	}
	if ok, err := h.unmarshalDPoPOption(d, option); ok {
		return err
	}
	return d.Errf("unrecognized oauth2_upstream option %q", option)
}

// unmarshalClientAuthOption reads the Caddyfile option that d is at, with
// its arguments, when it is a client authentication option; ok reports
// whether it was one.
func (o *ClientAuthOptions) unmarshalClientAuthOption(d *caddyfile.Dispenser, option string) (ok bool, err error) {
	words := map[string]*string{
		"client_auth": &o.ClientAuth, "signing_key": &o.SigningKey, "signing_alg": &o.SigningAlg,
		"signing_key_id": &o.SigningKeyID, "client_assertion_audience": &o.ClientAssertionAudience,
		"signing_certificate": &o.SigningCertificate, "signing_certificate_thumbprint": &o.SigningCertificateThumbprint,
		"assertion_issuer": &o.AssertionIssuer, "assertion_subject": &o.AssertionSubject,
		"assertion_audience": &o.AssertionAudience,
	}
	if target, ok := words[option]; ok {
		if n := d.CountRemainingArgs(); !d.AllArgs(target) {
			return true, d.Errf("%s: want one argument, got %d", option, n)
		}
		return true, nil
	}
	if option != "client_certificate" {
		return false, nil
	}
	if n := d.CountRemainingArgs(); !d.AllArgs(&o.ClientCertificate, &o.ClientCertificateKey) {
		return true, d.Errf("client_certificate: want <certificate> <key>, got %d arguments", n)
	}
	return true, nil
}
