package oauth2upstream

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// FuzzParseTokenResponse: any token endpoint answer either fails to parse
// or gives a token whose fields read back without panicking, and never a
// token from a body that is not an object. Seeds: testdata/fuzz/FuzzParseTokenResponse.
func FuzzParseTokenResponse(f *testing.F) {
	f.Add("application/json", []byte(`{"access_token":"at","expires_in":3600,"instance_url":"https://x"}`))
	f.Add("application/x-www-form-urlencoded", []byte(`access_token=at&expires_in=3600`))
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		header := http.Header{"Content-Type": {contentType}}
		token, err := parseTokenResponse(header, body)
		if err != nil {
			return
		}
		if token == nil {
			t.Fatal("parseTokenResponse returned a nil token and no error")
		}
		for field := range token {
			_ = token.String(field)
		}
		_ = expiryOf(token, fixedNow)
		vars := &requestPlaceholders{keySet: "k", cred: &credential{ks: &keystore.KeySet{Name: "k", Generation: 1, Token: token}}}
		for field := range token {
			if v, ok := vars.lookup(placeholderPrefix + "extra." + field); ok && secretField(field) {
				t.Fatalf("placeholder resolved secret field %q to %v", field, v)
			}
		}
	})
}

// FuzzUnmarshalCaddyfile: any directive block either fails with an error or
// gives a handler whose Validate does not panic.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	f.Add("oauth2_upstream {\n\ttoken_url https://login.example.com/token\n\tclient_id c\n\tmax_replay_body 1MiB\n}")
	f.Fuzz(func(t *testing.T, input string) {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
			return
		}
		h.setDefaults()
		_ = h.Validate()
	})
}

var fixedNow = newFakeClock().Now()
