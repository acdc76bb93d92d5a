package admin

import (
	"strings"
	"testing"
)

// The status command follows the list's Link rel="next" (RFC 8288).
func TestNextLink(t *testing.T) {
	t.Parallel()
	tests := []struct {
		values []string
		want   string
	}{
		{[]string{`</oauth2_upstream/key_sets?after=b&limit=2>; rel="next"`}, "/oauth2_upstream/key_sets?after=b&limit=2"},
		{[]string{`<https://x/help>; rel="help", </p?after=c>; rel="Next"`}, "/p?after=c"},
		{[]string{`</p>; rel="prev"`}, ""},
		{nil, ""},
	}
	for _, tt := range tests {
		if got := nextLink(tt.values); got != tt.want {
			t.Errorf("nextLink(%q) = %q; want %q", tt.values, got, tt.want)
		}
	}
}

// seed takes a token response as it is, and a bare refresh token as the
// refresh_token of one.
func TestSeedBody(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"rt-abc\n", `{"refresh_token":"rt-abc"}`},
		{` {"access_token":"a","refresh_token":"r"}` + "\n", `{"access_token":"a","refresh_token":"r"}`},
	}
	for _, tt := range tests {
		got, err := seedBody(strings.NewReader(tt.in))
		if err != nil || string(got) != tt.want {
			t.Errorf("seedBody(%q) = %s, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	if _, err := seedBody(strings.NewReader(" \n")); err == nil {
		t.Errorf("seedBody(blank) = nil error; want one")
	}
}
