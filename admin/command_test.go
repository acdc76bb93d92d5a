package admin

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
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

// The admin API's list and key set answers name the provider of the
// handler that serves each key set, and status prints it with, for each
// key set that is not ok, its state in words and what to do.
func TestStatusNamesProviderAndSaysStateInWords(t *testing.T) {
	t.Parallel()
	store, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	engine := credential.New(store, credential.Config{
		Endpoint: credential.TokenEndpoint{URL: "https://login.example.com/token", ClientID: "c"},
		SeedName: "crm", MaxWait: time.Second,
	})
	t.Cleanup(engine.Close)
	registry := new(live.Registry)
	registry.Handlers.Add(&live.Handler{Engine: engine, KeySets: live.KeySetRule{Name: "crm"}, Provider: "salesforce"})
	api := &API{logger: zap.NewNop(), registry: registry}
	route := api.Routes()[0]
	get := func(path string, v any) {
		t.Helper()
		rec := httptest.NewRecorder()
		if err := route.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil)); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
			t.Fatalf("GET %s = %s: %v", path, rec.Body, err)
		}
	}
	var statuses []credential.Status
	var one credential.Status
	get(answer.AdminPrefix+"key_sets", &statuses)
	get(answer.AdminPrefix+"key_sets/crm", &one)
	if len(statuses) != 1 || statuses[0].Provider != "salesforce" || one.Provider != "salesforce" {
		t.Errorf("the list = %+v, key set crm = %+v; want crm of provider salesforce in both", statuses, one)
	}

	var out bytes.Buffer
	if err := writeStatusTable(&out, statuses); err != nil {
		t.Fatal(err)
	}
	words := credential.DescribeState(credential.StateNeedsReauthorization, credential.CodeNoKeySet)
	for _, want := range []string{"PROVIDER", "salesforce", "no_key_set", "crm (needs_reauthorization): " + words} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status printed:\n%s\nwant it to hold %q", &out, want)
		}
	}
	out.Reset()
	writeStatusTable(&out, []credential.Status{{Name: "fine", State: credential.StateOK, Generation: 3}})
	if strings.Contains(out.String(), "fine (ok)") {
		t.Errorf("status printed words for an ok key set:\n%s", &out)
	}
}
