package oauth2upstream

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/discovery"
)

// DiscoveryOptions read the token endpoint and what it accepts from the
// authorization server's metadata. Handler embeds them.
type DiscoveryOptions struct {
	// Issuer is the authorization server's issuer identifier (RFC 8414
	// section 2), such as https://login.example.com/tenant1. Set, the
	// handler reads the server's metadata when it starts: OpenID Connect
	// Discovery's <issuer>/.well-known/openid-configuration, else RFC
	// 8414's /.well-known/oauth-authorization-server inserted before the
	// issuer's path; its issuer must be exactly this one, and no redirect
	// is followed. From it the handler takes what no option sets: token_url
	// (token_endpoint), and client_auth from
	// token_endpoint_auth_methods_supported (the default when listed, else
	// the first listed of those the handler's credentials allow: secret_basic,
	// secret_post with a client_secret; without one private_key_jwt with a
	// signing_key, tls_client_auth with a client_certificate, and none). With
	// dpop, a server whose dpop_signing_alg_values_supported lacks ES256,
	// the proofs' algorithm, is refused. The metadata is kept for 5m, shared
	// by the handlers and connect pages that name the issuer. If it cannot
	// be read, the handler does not start, unless token_url is set: then it
	// logs a warning and starts without it. It must be https unless its host
	// is loopback. Placeholders are replaced when the handler starts.
	// Default: none (no metadata is read).
	Issuer string `json:"issuer,omitempty"`

	// DiscoveryTimeout bounds reading the issuer's metadata, both
	// well-known locations included. Zero or absent: the default, 10s (the
	// Caddyfile refuses 0).
	DiscoveryTimeout caddy.Duration `json:"discovery_timeout,omitempty"`
}

// discover reads the issuer's metadata, when issuer is set, and takes from
// it what no option sets. It runs before the options are checked, so that
// Validate checks what it took like what was configured.
func (h *Handler) discover(ctx caddy.Context, repl *caddy.Replacer) error {
	h.Issuer = repl.ReplaceKnown(h.Issuer, "")
	if h.Issuer == "" {
		return nil
	}
	timeout := discovery.DefaultTimeout
	switch {
	case h.DiscoveryTimeout < 0:
		return fmt.Errorf("discovery_timeout %s: must be positive", time.Duration(h.DiscoveryTimeout))
	case h.DiscoveryTimeout > 0:
		timeout = time.Duration(h.DiscoveryTimeout)
	}
	md, err := h.registry.Metadata().Get(ctx, h.Issuer, timeout)
	switch {
	case errors.Is(err, discovery.ErrUnreachable) && h.TokenURL != "":
		h.logger.Warn("the issuer's metadata could not be read; starting with the configured token_url, "+
			"client_auth as configured or its default, and dpop unchecked",
			zap.String("issuer", h.Issuer), zap.Error(err))
		return nil
	case errors.Is(err, discovery.ErrUnreachable):
		return fmt.Errorf("issuer %q: its metadata could not be read: %w; "+
			"set token_url (and client_auth) to start without it", h.Issuer, err)
	case err != nil:
		return fmt.Errorf("issuer %q: %w", h.Issuer, err)
	}
	return h.useMetadata(md)
}

// useMetadata takes from md what no option sets, and refuses a DPoP the
// server does not take.
func (h *Handler) useMetadata(md *discovery.Metadata) error {
	if h.TokenURL == "" {
		if md.TokenEndpoint == "" {
			return fmt.Errorf("issuer %q: its metadata (%s) names no token_endpoint; set token_url", h.Issuer, md.Location)
		}
		option := fmt.Sprintf("token_endpoint of issuer %q", h.Issuer)
		if err := credential.CheckSecretsURL(option, md.TokenEndpoint, h.InsecureHTTP,
			"the client secret and refresh token cross it", "insecure_http is set"); err != nil {
			return err
		}
		h.TokenURL = md.TokenEndpoint
	}
	if h.ClientAuth == "" && h.AuthStyle == "" {
		candidates := h.clientAuthCandidates()
		method, ok := md.ChooseClientAuth(candidates)
		if !ok {
			return fmt.Errorf("issuer %q: its token endpoint takes client authentication %s (token_endpoint_auth_methods_supported), "+
				"and the handler's credentials allow %s; set client_auth and the credentials it needs",
				h.Issuer, strings.Join(md.TokenEndpointAuthMethods, ", "), strings.Join(candidates, ", "))
		}
		h.ClientAuth = method
	}
	// RFC 9449 section 5.1: the algorithms the server takes for proofs.
	if h.DPoP != nil && !md.SupportsDPoPAlg(credential.AlgES256) {
		return fmt.Errorf("dpop: the proofs are signed %s, which issuer %q does not take (dpop_signing_alg_values_supported: %s)",
			credential.AlgES256, h.Issuer, strings.Join(md.DPoPSigningAlgs, ", "))
	}
	return nil
}

// clientAuthCandidates are the client authentication methods the handler's
// credentials allow, in the order one is chosen from the metadata: the
// default first (when they allow it), then secret_basic and secret_post
// with a client_secret (which no other method sends); without one,
// private_key_jwt with a signing_key, tls_client_auth with a
// client_certificate, and none.
func (h *Handler) clientAuthCandidates() []string {
	var allowed []string
	switch {
	case h.ClientSecret != "":
		allowed = []string{credential.ClientAuthSecretBasic, credential.ClientAuthSecretPost}
	default:
		if h.SigningKey != "" {
			allowed = append(allowed, credential.ClientAuthPrivateKeyJWT)
		}
		if h.ClientCertificate != "" {
			allowed = append(allowed, credential.ClientAuthTLS)
		}
		allowed = append(allowed, credential.ClientAuthNone)
	}
	if def := h.clientAuth(); slices.Contains(allowed, def) {
		allowed = append([]string{def}, slices.DeleteFunc(allowed, func(m string) bool { return m == def })...)
	}
	return allowed
}
