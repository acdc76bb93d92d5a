package credential

import (
	"fmt"
	"time"
)

// Error codes of our own, used where the token endpoint gave no OAuth error
// code (RFC 6749 section 5.2 defines invalid_grant, invalid_client, ...).
const (
	CodeNoKeySet                 = "no_key_set"
	CodeInvalidKeySetName        = "invalid_key_set_name"
	CodeTokenEndpointUnavailable = "token_endpoint_unavailable"
	CodeTokenEndpointError       = "token_endpoint_error"
	CodeInvalidTokenResponse     = "invalid_token_response"
	CodeKeystoreUnavailable      = "keystore_unavailable"
	CodeKeystoreCorrupt          = "keystore_corrupt"
	// CodeKeySetForeign: the stored key set was granted for another
	// client (token URL or client id), so this engine neither uses,
	// refreshes nor overwrites it.
	CodeKeySetForeign = "key_set_foreign"
	// CodeKeySetUnbound: the stored key set names no client (written by
	// hand, or before key sets were bound), so nothing says whose tokens
	// it holds; this engine neither uses, refreshes nor overwrites it
	// unless Config.BindUnbound names it.
	CodeKeySetUnbound = "key_set_unbound"
	// CodeInvalidResponse replaces an error code from the token endpoint
	// that RFC 6749 section 5.2 does not allow, or that is too long or
	// holds a secret: a provider's code reaches answers, statuses and logs.
	CodeInvalidResponse = "invalid_response"
	// CodeUnsupportedGrant: an authorization code was offered to an engine
	// whose grant needs none.
	CodeUnsupportedGrant = "unsupported_grant"
	// CodeNoProofKey: a DPoP proof cannot be made for the key set.
	CodeNoProofKey = "dpop_key_unavailable"
	// CodeTokenNotDPoP: with DPoP, the token endpoint answered a token
	// type other than DPoP, a token not bound to the proof key: refused,
	// neither stored nor sent (RFC 9449 section 5).
	CodeTokenNotDPoP = "token_type_not_dpop"
	// CodeKeySetNotAllowed: a key set name that a request selected and
	// key_set_allow does not admit.
	CodeKeySetNotAllowed = "key_set_not_allowed"
)

// Error says why a key set cannot give a usable token. Its message names the
// key set and the OAuth error code and never holds a token value:
// descriptions from the token endpoint are redacted before they get here.
type Error struct {
	// KeySet is the name of the key set that failed.
	KeySet string
	// Code is the OAuth error code (invalid_grant, invalid_client, ...)
	// or one of ours (token_endpoint_unavailable, no_key_set, ...).
	Code string
	// Description explains the failure for people.
	Description string
	// Temporary failures (token endpoint down, timeout, 5xx, keystore
	// unreachable) may succeed later: clients get 503 with Retry-After.
	// Permanent ones (invalid_grant, invalid_client, no key set) need a
	// person: clients get 502.
	Temporary bool
	// RetryAfter is how long a temporary failure is expected to last.
	RetryAfter time.Duration
	// Err is the underlying error, for errors.As (for example
	// *oauth2.RetrieveError). Its message is not part of Error(), since
	// x/oauth2's includes the token endpoint's response body.
	Err error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("key set %q: %s", e.KeySet, e.Code)
	if e.Description != "" {
		msg += ": " + e.Description
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// TooRecentError is what Rejected returns instead of making a grant when
// the rejected generation is the key set in use and younger than
// Config.MinRefreshInterval. A token granted moments ago that the upstream
// rejects was most likely rejected for something else (a path that answers
// 401 to every token, a permission the account lacks, RFC 6750's
// insufficient_scope); granting again would only spend a refresh token per
// request. The caller passes the upstream's answer on unchanged.
type TooRecentError struct {
	// KeySet is the name of the key set.
	KeySet string
	// Generation is the rejected generation, the one in use.
	Generation int64
	// Age is how old the generation was when the rejection came.
	Age time.Duration
	// MinInterval is the engine's minimum refresh interval.
	MinInterval time.Duration
}

func (e *TooRecentError) Error() string {
	return fmt.Sprintf("key set %q: generation %d was rejected %s after it was made, within the minimum refresh interval (%s): no grant",
		e.KeySet, e.Generation, e.Age, e.MinInterval)
}
