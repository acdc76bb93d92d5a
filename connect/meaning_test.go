package connect

import (
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// The status page says in words what each key set's state means and what
// to do, and names its provider when the handler names one: a new account
// is told to connect, a connected one that it serves.
func TestConnectStatusPageSaysStateInWords(t *testing.T) {
	t.Parallel()
	for _, provider := range []string{"", "salesforce"} {
		t.Run("provider "+provider, func(t *testing.T) {
			t.Parallel()
			rig := newConnectRig(t, nil)
			rig.handler.Provider = provider
			before := rig.get(t, rig.client, "/")
			want := template.HTMLEscapeString(credential.DescribeState(credential.StateNeedsReauthorization, credential.CodeNoKeySet))
			if before.status != http.StatusOK || !strings.Contains(before.body, `<p class="meaning">`+want+`</p>`) {
				t.Errorf("the status page of a new account = %d; want it to say %q:\n%s", before.status, want, before.body)
			}
			if shown := strings.Contains(before.body, `<p class="provider">Provider: salesforce</p>`); shown != (provider != "") {
				t.Errorf("the status page names provider salesforce: %v; want %v:\n%s", shown, provider != "", before.body)
			}
			state := rig.start(t, "crm").Query().Get("state")
			if p := rig.callback(t, url.Values{"code": {"code-1"}, "state": {state}}); p.status != http.StatusSeeOther {
				t.Fatalf("callback = %d; want 303:\n%s", p.status, p.body)
			}
			after := rig.get(t, rig.client, "/")
			want = template.HTMLEscapeString(credential.DescribeState(credential.StateOK, ""))
			if !strings.Contains(after.body, want) {
				t.Errorf("the status page of a connected account does not say %q:\n%s", want, after.body)
			}
		})
	}
}
