package credential

import (
	"net/http"
	"testing"
	"time"
)

var fuzzNow = time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)

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
		_ = expiryOf(token, fuzzNow)
	})
}
