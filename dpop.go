package oauth2upstream

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// dpopHeader is the request header of a DPoP proof (RFC 9449 section 4.1),
// canonical.
const dpopHeader = "Dpop"

// dpopScheme is the Authorization scheme of a DPoP-bound token (RFC 9449
// section 7.1).
const dpopScheme = "DPoP"

// DPoPOptions bind the tokens to a key the sidecar holds (RFC 9449): a
// stolen token is useless without it. Handler embeds them.
type DPoPOptions struct {
	// DPoP, when set, sends a DPoP proof with every token request and
	// every upstream request, and the token as "Authorization: DPoP
	// <token>". Default: none (bearer tokens).
	DPoP *DPoPConfig `json:"dpop,omitempty"`

	prover *credential.DPoP
}

// DPoPConfig configures DPoP.
type DPoPConfig struct {
	// Resource is the upstream API's URL as the API knows itself, such as
	// https://api.example.com: the htu of a proof is it followed by the
	// request's path. Request placeholders are replaced per request
	// ({http.oauth2_upstream.extra.instance_url}). Required.
	Resource string `json:"resource"`

	// Key is the EC P-256 private key (PEM: a file's path, or the PEM
	// itself, usually {env.DPOP_KEY}) that every key set's tokens are
	// bound to. Default: each key set gets its own at its first grant,
	// stored in the key set document (encrypted with encryption_key), so
	// that every replica and every restart proves with it.
	Key string `json:"key,omitempty"`
}

// provisionDPoP loads the DPoP key, if any. Errors name the option.
func (o *DPoPOptions) provisionDPoP(repl *caddy.Replacer) error {
	if o.DPoP == nil {
		return nil
	}
	var err error
	raw := o.DPoP.Key
	if o.DPoP.Key = repl.ReplaceKnown(raw, ""); o.DPoP.Key == "" {
		o.prover, err = credential.NewDPoP(nil)
		return err
	}
	key, err := loadPrivateKey("dpop key", raw, o.DPoP.Key)
	if err != nil {
		return err
	}
	if o.prover, err = credential.NewDPoP(key); err != nil {
		return fmt.Errorf("dpop key: %w", err)
	}
	return nil
}

// validateDPoP checks the DPoP options against the credential header, the
// handler's headerName and headerScheme, and against encrypted: whether
// key set documents are encrypted at rest.
func (o *DPoPOptions) validateDPoP(headerName, headerScheme string, encrypted bool) error {
	if o.DPoP == nil {
		return nil
	}
	if o.DPoP.Key == "" && !encrypted {
		// Each key set's own proof key is stored in its document, beside
		// the tokens: in clear, it makes a stolen document usable.
		return errors.New("dpop: without a key, each key set's proof key is stored in its key set document; " +
			"set encryption_key so that documents are encrypted at rest, or give one key for every key set (dpop <url> { key <file|pem> })")
	}
	if !strings.EqualFold(headerName, "Authorization") || headerScheme != dpopScheme {
		return fmt.Errorf("dpop: a DPoP-bound token goes in \"Authorization: DPoP <token>\" (RFC 9449 section 7.1), not %s %q", headerName, headerScheme)
	}
	resource := o.DPoP.Resource
	if resource == "" {
		return errors.New("dpop: the upstream's URL is required (dpop <url>): it is the htu of every proof")
	}
	if strings.Contains(resource, "{") {
		return nil // checked once replaced, per request
	}
	u, err := url.Parse(resource)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("dpop %q: must be an absolute http(s) URL without query or fragment", resource)
	}
	return nil
}

// unmarshalDPoPOption reads the dpop option; ok reports whether d is at
// it. Syntax:
//
//	dpop <upstream url> {
//		key <file|pem>
//	}
func (o *DPoPOptions) unmarshalDPoPOption(d *caddyfile.Dispenser, option string) (ok bool, err error) {
	if option != "dpop" {
		return false, nil
	}
	o.DPoP = new(DPoPConfig)
	if !d.AllArgs(&o.DPoP.Resource) {
		return true, d.Errf("dpop: want <upstream url>, the htu of the proofs")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "key":
			if !d.AllArgs(&o.DPoP.Key) {
				return true, d.Errf("dpop key: want <file|pem>")
			}
		default:
			return true, d.Errf("unrecognized dpop option %q", d.Val())
		}
	}
	return true, nil
}
