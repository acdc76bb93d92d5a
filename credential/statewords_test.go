package credential

import (
	"strings"
	"testing"
)

// Each state, with the codes that cause it, is said in words that name
// the cause and what to do.
func TestDescribeState(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, state, code string
		want              []string
	}{
		{"ok", StateOK, "", []string{"Serving", "Nothing to do"}},
		{"expiring", StateExpiring, "", []string{"refresh is due"}},
		{"expiring after a failure", StateExpiring, CodeTokenEndpointUnavailable, []string{"token_endpoint_unavailable", "cannot be reached", "retried by itself"}},
		{"failing", StateFailing, CodeTokenEndpointError, []string{"Not serving", "token_endpoint_error", "server error", "check the token endpoint"}},
		{"failing for a provider's code", StateFailing, "invalid_scope", []string{"invalid_scope", "provider refused"}},
		{"a new account", StateNeedsReauthorization, CodeNoKeySet, []string{"No tokens are stored", "connect the account on the connect page", "caddy oauth2-upstream seed"}},
		{"a refused refresh token", StateNeedsReauthorization, "invalid_grant", []string{"refused the refresh token (invalid_grant)", "Connect the account again on the connect page"}},
		{"a refused client", StateNeedsReauthorization, "invalid_client", []string{"invalid_client", "client_secret"}},
		{"another client's key set", StateNeedsReauthorization, CodeKeySetForeign, []string{"another client", "key_set"}},
		{"an unbound key set", StateNeedsReauthorization, CodeKeySetUnbound, []string{"bind_unbound"}},
		{"a corrupt document", StateNeedsReauthorization, CodeKeystoreCorrupt, []string{"keystore_corrupt", "encryption_key"}},
		{"another permanent code", StateNeedsReauthorization, "access_denied", []string{"access_denied", "a person must act"}},
		{"the keystore", StateKeystoreFailing, CodeKeystoreUnavailable, []string{"keystore_unavailable", "check the keystore"}},
		{"an unknown state", "sleeping", "", []string{`"sleeping"`}},
	}
	for _, tt := range tests {
		got := DescribeState(tt.state, tt.code)
		for _, want := range tt.want {
			if !strings.Contains(got, want) {
				t.Errorf("%s: DescribeState(%q, %q) = %q; want it to hold %q", tt.name, tt.state, tt.code, got, want)
			}
		}
	}
}
