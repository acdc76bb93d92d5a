package connect

import (
	"maps"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Intuit sends realmId, the company every QuickBooks API path names, only
// in the redirect back. The page keeps the fields callback_fields names
// with the key set it connects; a refresh keeps them; a value that is not
// short printable text is dropped, and an unnamed parameter never kept.
func TestConnectKeepsCallbackFields(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, func(c *Connect) { c.CallbackFields = []string{"realmId", "region"} })
	auth := rig.start(t, "crm")
	p := rig.callback(t, url.Values{"code": {"code-1"}, "state": {auth.Query().Get("state")},
		"realmId": {"9130350109567186"}, "region": {"eu\nx"}, "other": {"x"}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("callback = %d; want 303:\n%s", p.status, p.body)
	}
	ks := rig.stored(t)
	if want := map[string]string{"realmId": "9130350109567186"}; !maps.Equal(ks.Callback, want) {
		t.Fatalf("stored callback = %v; want %v", ks.Callback, want)
	}
	// A refresh carries them into the next generation.
	if _, err := rig.handler.Engine.ForceRefresh(t.Context(), "crm"); err != nil {
		t.Fatalf("ForceRefresh(crm) = %v", err)
	}
	if next := rig.stored(t); next.Generation != ks.Generation+1 || next.Callback["realmId"] != "9130350109567186" {
		t.Errorf("after a refresh: generation %d, callback %v; want %d with realmId kept", next.Generation, next.Callback, ks.Generation+1)
	}
	extras, _ := keystore.NewExtraFields([]string{"realmId"})
	if v, ok := extras.ExtraOf(rig.stored(t), "realmId"); !ok || v != "9130350109567186" {
		t.Errorf("ExtraOf(realmId) = %q, %v; want the kept value", v, ok)
	}
}

// callback_fields may not name the redirect back's own parameters, nor a
// name shaped like a credential.
func TestConnectCallbackFieldsRefused(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"code", "state", "iss", "error", "id_token", "client_secret", ""} {
		c := Connect{AuthorizeURL: "https://login.example.com/authorize", CallbackPath: "/callback", FlowTimeout: 1, CallbackFields: []string{name}}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "callback_fields") {
			t.Errorf("Validate() with callback_fields %q = %v; want it refused", name, err)
		}
	}
}
