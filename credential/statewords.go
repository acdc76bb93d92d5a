package credential

import "fmt"

// DescribeState says in words what a key set's state means and what to do
// about it: the connect page and the status command show it beside the
// state. errorCode is the status's ErrorCode, the cause of a failure.
func DescribeState(state, errorCode string) string {
	switch state {
	case StateOK:
		return "Serving: its token is valid and is refreshed before it expires. Nothing to do."
	case StateExpiring:
		if errorCode != "" {
			return fmt.Sprintf("Serving with the token in hand, which outlasts the next attempt: the last refresh failed for now (%s: %s). "+
				"It is retried by itself; nothing to do unless it turns failing.", errorCode, temporaryCause(errorCode))
		}
		return "Serving: its token expires soon or has expired, and a refresh is due or under way. Nothing to do."
	case StateFailing:
		return fmt.Sprintf("Not serving: refreshes fail for now (%s: %s), and the token in hand does not last until the next attempt. "+
			"It is retried by itself; if it persists, check the token endpoint, the network and the provider's status.", errorCode, temporaryCause(errorCode))
	case StateNeedsReauthorization:
		return reauthorization(errorCode)
	case StateKeystoreFailing:
		return fmt.Sprintf("The keystore cannot be read or written now (%s): a key set granted and not yet stored serves from memory, "+
			"and its refresh token is not spent again until it is stored. It is retried by itself; check the keystore (its disk or Redis).", orNone(errorCode))
	}
	return fmt.Sprintf("State %q is not one this version knows.", state)
}

// temporaryCause says what a temporary failure's code means.
func temporaryCause(code string) string {
	switch code {
	case CodeTokenEndpointUnavailable:
		return "the token endpoint cannot be reached, timed out or asked to wait"
	case CodeTokenEndpointError:
		return "the token endpoint answered with a server error"
	case CodeInvalidTokenResponse:
		return "the token endpoint's answer held no usable token"
	case CodeTokenNotDPoP:
		return "the token endpoint issued a token not bound to the DPoP key"
	case CodeKeystoreUnavailable:
		return "the keystore cannot be reached"
	case "":
		return "no cause recorded"
	}
	return "the provider refused the request, and a retry may succeed"
}

// reauthorization says why a key set needs a person, and what they do.
func reauthorization(code string) string {
	switch code {
	case CodeNoKeySet:
		return "No tokens are stored for it yet: connect the account on the connect page, or seed it (caddy oauth2-upstream seed)."
	case "invalid_grant":
		return "The provider refused the refresh token (invalid_grant): it was revoked, expired or already used. " +
			"Connect the account again on the connect page, or seed a new refresh token (caddy oauth2-upstream seed)."
	case "invalid_client":
		return "The provider refused the client's credentials (invalid_client): check client_id, client_secret, " +
			"client_auth and the signing key or certificate, then refresh it."
	case "unauthorized_client":
		return "The provider does not let this client use its grant (unauthorized_client): allow the grant for the client at the provider, then refresh it."
	case CodeKeySetForeign:
		return "The stored key set was granted for another client (token URL or client id), so this handler leaves it alone: " +
			"give this handler a key_set of its own, or remove the document and connect the account again."
	case CodeKeySetUnbound:
		return "The stored key set names no client, so nothing says whose tokens it holds: " +
			"set bind_unbound once to bind it to this handler's client, or seed it again (caddy oauth2-upstream seed)."
	case CodeKeystoreCorrupt:
		return "The stored document cannot be read (keystore_corrupt): it is damaged, or encrypted with a key encryption_key does not hold. " +
			"Give the key, or seed the key set again (caddy oauth2-upstream seed)."
	case CodeNoProofKey:
		return "No DPoP proof can be made for it (dpop_key_unavailable): its proof key is missing or unreadable. " +
			"Configure the dpop key, or connect the account again."
	}
	return fmt.Sprintf("The provider refused the grant for good (%s): a person must act. "+
		"Connect the account again on the connect page, or fix the client's configuration.", orNone(code))
}

func orNone(code string) string {
	if code == "" {
		return "no cause recorded"
	}
	return code
}
