// Package keystore holds the key set document (the provider's whole token
// response plus bookkeeping), the Store interface every backend implements
// with the optional interfaces beside it, and what backends share: the JSON
// and encrypting codecs, name validation, the generation check and the
// errors. The backends are packages of their own (keystore/file,
// keystore/redis, keystore/caddystorage), so that a program links only the
// ones it uses.
package keystore

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"time"
)

// KeySet is a credential's "keys": the provider's whole token
// response, kept verbatim, with the bookkeeping a store needs. One document
// is stored per key set name.
type KeySet struct {
	// Name identifies the key set; it selects the document in the store.
	Name string `json:"name"`

	// Generation grows by one on every stored change. Stores refuse a
	// write whose generation is not exactly one more than the stored one,
	// so it fences concurrent writers.
	Generation int64 `json:"generation"`

	// UpdatedAt is when this generation was made.
	UpdatedAt time.Time `json:"updated_at"`

	// Expiry is when the access token expires, computed from the
	// response's expires_in when it was received. Zero means unknown:
	// only a trigger status (401) then tells that the token is dead.
	Expiry time.Time `json:"expiry,omitzero"`

	// RefreshExpiry is when the refresh token expires, computed from the
	// lifetime the token response announced for it
	// (refresh_token_expires_in, x_refresh_token_expires_in or
	// refresh_expires_in) when it was received; kept from the previous
	// generation when a response announces none and leaves the refresh
	// token as it was. Zero means unknown: most providers never say.
	RefreshExpiry time.Time `json:"refresh_expiry,omitzero"`

	// RefreshExpiryFixed says that the refresh that made this generation
	// did not move RefreshExpiry later: the provider caps the refresh
	// token's life (a session maximum, or a lifetime counted from the
	// authorization), so refreshing does not extend it, and the account
	// needs a person by RefreshExpiry.
	RefreshExpiryFixed bool `json:"refresh_expiry_fixed,omitempty"`

	// Token is exactly what the provider sent, merged with the previous
	// refresh token when the response carried none.
	Token Token `json:"token"`

	// Client is the client the key set was granted for. Its tokens are
	// that client's: an engine configured for another client must not
	// send them upstream, spend the refresh token at its own token
	// endpoint, or write over the document. Nil in documents written by
	// hand or before key sets were bound: nothing then says whose tokens
	// they hold, so an engine refuses them, unless its operator named the
	// key set for binding (credential.Config.BindUnbound), and binds it on
	// its next write.
	Client *Binding `json:"client,omitempty"`

	// ProofKey is the private key, a JWK, that the key set's tokens are
	// bound to (DPoP, RFC 9449): made at the key set's first grant and kept
	// from generation to generation. Absent without DPoP. A secret like
	// the tokens, encrypted with the rest of the document.
	ProofKey json.RawMessage `json:"proof_key,omitempty"`

	// Callback holds values the authorization server's redirect back
	// carried besides the code, when a person connected the key set in a
	// browser (Intuit's realmId names the company every API path holds;
	// the token response does not). The connect page keeps the fields its
	// callback_fields names; every next generation carries them, so a
	// refresh does not lose them. They read as extra fields of the token
	// (ExtraFields), which wins when it holds the same name.
	Callback map[string]string `json:"callback,omitempty"`
}

// Binding names the OAuth2 client a key set belongs to.
type Binding struct {
	// TokenURL is the token endpoint the tokens came from, exactly as
	// configured (after placeholder replacement): no normalization, so
	// two spellings of one endpoint are two clients, which errs on the
	// side of refusing a key set rather than leaking it.
	TokenURL string `json:"token_url"`
	// ClientID is the client_id the tokens were issued to.
	ClientID string `json:"client_id"`
}

// Token is a token endpoint response, field by field, each value kept as
// the raw JSON the provider sent so that fields x/oauth2 does not model
// (instance_url, id_token, scope, ...) survive unchanged.
type Token map[string]json.RawMessage

// Field names of RFC 6749 section 5.1 that this package reads.
const (
	FieldAccessToken  = "access_token"
	FieldRefreshToken = "refresh_token"
	FieldTokenType    = "token_type"
	FieldExpiresIn    = "expires_in"
)

// String returns the field as a string: a JSON string's value, or the raw
// text of any other JSON value (numbers stay as sent). Missing fields and
// null give "".
func (t Token) String(field string) string {
	raw, ok := t[field]
	if !ok {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s
	}
	if string(raw) == "null" {
		return ""
	}
	return string(raw)
}

// AccessToken returns the access token, or "" when the key set is a seed.
func (t Token) AccessToken() string { return t.String(FieldAccessToken) }

// RefreshToken returns the refresh token, or "" when there is none.
func (t Token) RefreshToken() string { return t.String(FieldRefreshToken) }

// Clone returns a copy that shares no map with t.
func (t Token) Clone() Token {
	c := make(Token, len(t))
	for k, v := range t {
		c[k] = v
	}
	return c
}

// SetString sets field to the JSON string s.
func (t Token) SetString(field, s string) {
	raw, _ := json.Marshal(s) // marshalling a string cannot fail
	t[field] = raw
}

// Expiring reports whether the access token must be replaced at now, given
// the skew: it is missing, or its known expiry is within skew of now.
func (ks *KeySet) Expiring(now time.Time, skew time.Duration) bool {
	return ks.Token.AccessToken() == "" || ks.ExpiresWithin(now, skew)
}

// ExpiresWithin reports whether the known expiry is within skew of now; an
// unknown expiry never is (only a trigger status tells such a token is dead).
func (ks *KeySet) ExpiresWithin(now time.Time, skew time.Duration) bool {
	return !ks.Expiry.IsZero() && !now.Add(skew).Before(ks.Expiry)
}

// Next returns the key set that follows ks after a grant answered with
// response: the next generation, the response verbatim, ks's refresh token
// kept when the response has none (as Salesforce and Google do), ks's
// client binding and its proof key. When the refresh token stays what it
// was, so do its RefreshExpiry and RefreshExpiryFixed; the caller sets
// them anew when the response announces a lifetime, and judges whether a
// refresh extended it.
func (ks *KeySet) Next(response Token, expiry, now time.Time) *KeySet {
	token := response.Clone()
	if token.RefreshToken() == "" {
		if rt, ok := ks.Token[FieldRefreshToken]; ok {
			token[FieldRefreshToken] = rt
		}
	}
	var client *Binding
	if ks.Client != nil {
		b := *ks.Client
		client = &b
	}
	next := &KeySet{
		Name:       ks.Name,
		Generation: ks.Generation + 1,
		UpdatedAt:  now.UTC(),
		Expiry:     expiry.UTC(),
		Token:      token,
		Client:     client,
		ProofKey:   slices.Clone(ks.ProofKey),
		Callback:   maps.Clone(ks.Callback),
	}
	if !ks.RefreshExpiry.IsZero() && token.RefreshToken() == ks.Token.RefreshToken() {
		next.RefreshExpiry, next.RefreshExpiryFixed = ks.RefreshExpiry, ks.RefreshExpiryFixed
	}
	return next
}

// namePattern is what a key set name may look like: it becomes a file name
// or a Redis key, so no separators, no dot files and a bounded length.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// ValidateName reports whether name can name a key set.
func ValidateName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w: %q must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalidName, name)
	}
	return nil
}

// Validate checks a decoded document: a valid name, the expected one when
// want is not empty, a positive generation, and at least a refresh token or
// an access token (a document holding only a refresh token is a valid seed).
func (ks *KeySet) Validate(want string) error {
	if err := ValidateName(ks.Name); err != nil {
		return err
	}
	if want != "" && ks.Name != want {
		return fmt.Errorf("%w: document names key set %q, stored as %q", ErrCorrupt, ks.Name, want)
	}
	if ks.Generation < 1 {
		return fmt.Errorf("%w: key set %q has generation %d, want 1 or more", ErrCorrupt, ks.Name, ks.Generation)
	}
	if ks.Token.AccessToken() == "" && ks.Token.RefreshToken() == "" {
		return fmt.Errorf("%w: key set %q holds neither an access_token nor a refresh_token", ErrCorrupt, ks.Name)
	}
	return nil
}

// Errors every Store reports, wrapped with context; test them with errors.Is.
var (
	// ErrNotFound: no key set is stored under that name.
	ErrNotFound = errors.New("key set not found")
	// ErrConflict: the stored generation is not the one the write follows;
	// another writer stored a newer key set first.
	ErrConflict = errors.New("key set generation conflict")
	// ErrCorrupt: a stored document does not decode or is not valid.
	ErrCorrupt = errors.New("key set document is corrupt")
	// ErrInvalidName: the name cannot name a key set.
	ErrInvalidName = errors.New("invalid key set name")
)
