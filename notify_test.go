package oauth2upstream

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Notification signing secrets of the tests below: whsec_ and the base64
// of 32 bytes.
const (
	orderSecret = "whsec_b3JkZXItc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXM="
	envSecret   = "whsec_ZW52LW5vdGlmeS1zZWNyZXQtdGhpcnR5LXR3by1ieXQ="
	plainSecret = "whsec_bm90aWZ5LXRlc3Qtc2VjcmV0LTMyLWJ5dGVzLWxvbmc="
)

// With notify_include_tokens, every stored change is POSTed once, in
// order, signed, with the whole token response: the seed, a grant, a
// refresh after a 401, and an admin PUT; Cleanup delivers what is still
// pending.
func TestNotifyDeliversEachChangeInOrder(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Extra = map[string]any{"instance_url": "https://eu1.example.com"}
	api := newAPIServer(t, "Bearer at-1")
	rcv := credentialtest.NewReceiver(t)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "notify-order", RefreshToken: "rt-0",
		NotifyOptions: NotifyOptions{Notify: rcv.Server.URL, NotifySecret: orderSecret, NotifyIncludeTokens: true}}, hostPort(t, api.server.URL))
	a, _ := adminFor(t)

	clock := credentialtest.NewClock()
	s.useClock(clock)
	s.get(t, "/first") // seed (1), grant (2)
	ageTokens(clock)
	api.setValid("Bearer at-2")
	if resp, _ := s.get(t, "/second"); resp.StatusCode != http.StatusOK { // 401, grant (3), replay
		t.Fatalf("replayed request = %d; want 200", resp.StatusCode)
	}
	put := `{"access_token":"put<&>","refresh_token":"put-rt","expires_in":60}`
	if rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/notify-order", put); rec.Code != http.StatusOK { // (4)
		t.Fatalf("PUT = %d (%s)", rec.Code, rec.Body)
	}
	s.handler.Cleanup() // drains the deliveries still pending

	got := rcv.Notifications()
	want := []credentialtest.Notification{
		{Name: "notify-order", Generation: 1, Token: credentialtest.TokenOf(t, `{"refresh_token":"rt-0"}`)},
		{Name: "notify-order", Generation: 2, Token: credentialtest.TokenOf(t, `{"access_token":"at-1","refresh_token":"rt-1","token_type":"Bearer","expires_in":3600,"instance_url":"https://eu1.example.com"}`)},
		{Name: "notify-order", Generation: 3, Token: credentialtest.TokenOf(t, `{"access_token":"at-2","refresh_token":"rt-2","token_type":"Bearer","expires_in":3600,"instance_url":"https://eu1.example.com"}`)},
		{Name: "notify-order", Generation: 4, Token: credentialtest.TokenOf(t, put)},
	}
	if len(got) != len(want) {
		t.Fatalf("received generations %v; want 1, 2, 3, 4, each once", credentialtest.Generations(got, "notify-order"))
	}
	for i := range want {
		if got[i].Name != want[i].Name || got[i].Generation != want[i].Generation || !credentialtest.SameJSON(got[i].Token, want[i].Token) {
			t.Errorf("notification %d = %s %d %v; want %s %d %v", i, got[i].Name, got[i].Generation, got[i].Token,
				want[i].Name, want[i].Generation, want[i].Token)
		}
	}
	if raw := rcv.Bodies(); len(raw) == 4 && !strings.Contains(raw[3], `"put<&>"`) {
		t.Errorf("PUT notification body %s; want the token's exact text (no HTML escaping)", raw[3])
	}
	for i, d := range rcv.Deliveries() {
		if _, err := credentialtest.VerifyWebhook(d.Header, d.Body, orderSecret); err != nil {
			t.Errorf("delivery %d: %v", i+1, err)
		}
	}
	rcv.Mu.Lock()
	defer rcv.Mu.Unlock()
	if len(rcv.Bad) != 0 {
		t.Errorf("improper notification requests: %v", rcv.Bad)
	}
}

// A slow receiver does not slow requests: with every request making a
// grant (refresh always), requests complete while the receiver holds the
// first notification; then every change arrives, in order.
func TestNotifySlowReceiverDoesNotHoldRequests(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(api.Close)
	rcv := credentialtest.NewReceiver(t)
	rcv.Hold = "notify-slow"
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "notify-slow", RefreshToken: "rt-0", Refresh: credential.ModeAlways,
		NotifyOptions: NotifyOptions{Notify: rcv.Server.URL, NotifySecret: plainSecret}}, hostPort(t, api.URL))

	client := &http.Client{Timeout: 10 * time.Second}
	for i := range 5 {
		resp, err := client.Get(s.server.URL + "/x")
		if err != nil {
			t.Fatalf("request %d while the receiver is held: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d = %d; want 200", i, resp.StatusCode)
		}
	}
	if got := <-rcv.Arrived; got != "notify-slow" {
		t.Fatalf("first notification for %q; want notify-slow", got)
	}
	if got := rcv.Notifications(); len(got) != 0 {
		t.Fatalf("receiver accepted %d while held; want 0", len(got))
	}
	rcv.Unblock()
	rcv.WaitFor(t, 6)
	if got := credentialtest.Generations(rcv.Notifications(), "notify-slow"); !reflect.DeepEqual(got, []int64{1, 2, 3, 4, 5, 6}) {
		t.Errorf("received generations %v; want [1 2 3 4 5 6] (the seed and five grants)", got)
	}
}

// Without notify_include_tokens a notification holds no token value, even
// for a refresh an operator forces: a receiver that a connector could
// configure learns that the key set changed (generation, expiry, the
// extras of the default allow-list), never its credentials, whatever
// their names (id_token, api_key, tokens). Each delivery is signed with notify_secret and
// carries the notify_header values, placeholders replaced.
func TestNotifyDefaultCarriesNoTokens(t *testing.T) {
	// Not parallel: t.Setenv.
	t.Setenv("OAUTH2UPSTREAM_TEST_NOTIFY_SECRET", envSecret)
	t.Setenv("OAUTH2UPSTREAM_TEST_NOTIFY_KEY", "env-receiver-key")
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Extra = map[string]any{"instance_url": "https://eu1.example.com", "id_token": "id-value", "api_key": "ak-value", "tokens": "tk-value"}
	api := newAPIServer(t, "Bearer at-1")
	rcv := credentialtest.NewReceiver(t)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "notify-plain", RefreshToken: "rt-0",
		NotifyOptions: NotifyOptions{Notify: rcv.Server.URL, NotifySecret: "{env.OAUTH2UPSTREAM_TEST_NOTIFY_SECRET}",
			NotifyHeaders: http.Header{"Authorization": {"Bearer {env.OAUTH2UPSTREAM_TEST_NOTIFY_KEY}"}}}},
		hostPort(t, api.server.URL))
	a, _ := adminFor(t)

	s.get(t, "/first")                                                                                                            // seed (1), grant (2)
	if rec := adminCall(t, a, http.MethodPost, "/oauth2_upstream/key_sets/notify-plain/refresh", ""); rec.Code != http.StatusOK { // (3)
		t.Fatalf("forced refresh = %d (%s)", rec.Code, rec.Body)
	}
	s.handler.Cleanup()

	got := rcv.Notifications()
	if gens := credentialtest.Generations(got, "notify-plain"); !reflect.DeepEqual(gens, []int64{1, 2, 3}) {
		t.Fatalf("received generations %v; want [1 2 3]", gens)
	}
	for i, body := range rcv.Bodies() {
		for _, value := range []string{"rt-0", "at-1", "rt-1", "at-2", "rt-2", "id-value", "ak-value", "tk-value"} {
			if strings.Contains(body, value) {
				t.Errorf("notification %d %s holds the token value %s", i+1, body, value)
			}
		}
	}
	wantExtra := map[string]string{"instance_url": "https://eu1.example.com", "token_type": "Bearer", "expires_in": "3600"}
	for i, n := range got[1:] { // the grants; the seed has no extras and no expiry
		if !reflect.DeepEqual(n.Extra, wantExtra) || n.Expiry.IsZero() || n.UpdatedAt.IsZero() || n.Token != nil {
			t.Errorf("notification %d = extra %v expiry %v updated_at %v token %v; want extra %v, both times, no token",
				i+2, n.Extra, n.Expiry, n.UpdatedAt, n.Token, wantExtra)
		}
	}
	for i, d := range rcv.Deliveries() {
		if _, err := credentialtest.VerifyWebhook(d.Header, d.Body, envSecret); err != nil {
			t.Errorf("delivery %d: %v", i+1, err)
		}
		if got := d.Header.Get("Authorization"); got != "Bearer env-receiver-key" {
			t.Errorf("delivery %d Authorization = %q; want %q", i+1, got, "Bearer env-receiver-key")
		}
	}
}

// extra_fields names what a notification's extra holds: a field it adds
// is sent, a default it leaves out is not.
func TestNotifyExtraFields(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Extra = map[string]any{"instance_url": "https://eu1.example.com", "tenant": "acme"}
	api := newAPIServer(t, "Bearer at-1")
	rcv := credentialtest.NewReceiver(t)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "notify-extras", RefreshToken: "rt-0",
		ExtraFields:   []string{"instance_url", "tenant"},
		NotifyOptions: NotifyOptions{Notify: rcv.Server.URL, NotifySecret: plainSecret}}, hostPort(t, api.server.URL))
	s.get(t, "/first") // seed (1), grant (2)
	s.handler.Cleanup()

	got := rcv.Notifications()
	if len(got) != 2 {
		t.Fatalf("received %d notifications; want 2 (the seed, the grant)", len(got))
	}
	if want := map[string]string{"instance_url": "https://eu1.example.com", "tenant": "acme"}; !reflect.DeepEqual(got[1].Extra, want) {
		t.Errorf("grant's extra = %v; want %v (what extra_fields names)", got[1].Extra, want)
	}
}

// notify must be https, or http to a loopback host, and needs
// notify_secret; the notify options are refused without notify, and
// notify_header refuses invalid names and the headers the notifier sets.
func TestNotifyValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		modify  func(h *Handler)
		wantErr string // "" when valid
	}{
		{name: "https", modify: func(h *Handler) { h.Notify = "https://platform.example.com/oauth2/keys" }},
		{name: "loopback ip", modify: func(h *Handler) { h.Notify = "http://127.0.0.1:9000/keys" }},
		{name: "localhost", modify: func(h *Handler) { h.Notify = "http://localhost/keys" }},
		{name: "loopback ipv6", modify: func(h *Handler) { h.Notify = "http://[::1]:8080/keys" }},
		{name: "plain http elsewhere", modify: func(h *Handler) { h.Notify = "http://platform.example.com/keys" }, wantErr: "must be https"},
		{name: "ftp", modify: func(h *Handler) { h.Notify = "ftp://127.0.0.1/keys" }, wantErr: "must be an absolute http(s) URL"},
		{name: "relative", modify: func(h *Handler) { h.Notify = "/keys" }, wantErr: "must be an absolute http(s) URL"},
		{name: "credentials in url", modify: func(h *Handler) { h.Notify = "https://user:pass@platform.example.com/keys" }, wantErr: "must not carry credentials"},
		{name: "no notify_secret", modify: func(h *Handler) { h.NotifySecret = "" }, wantErr: "notify_secret is required with notify"},
		{name: "include_tokens", modify: func(h *Handler) { h.NotifyIncludeTokens = true }},
		{name: "notify_header", modify: func(h *Handler) { h.NotifyHeaders = http.Header{"Authorization": {"Bearer k"}} }},
		{name: "bad notify_header name", modify: func(h *Handler) { h.NotifyHeaders = http.Header{"Bad Header": {"k"}} }, wantErr: `notify_header "Bad Header": not a valid header field name`},
		{name: "notify_header Content-Type", modify: func(h *Handler) { h.NotifyHeaders = http.Header{"Content-Type": {"text/plain"}} }, wantErr: "notify_header Content-Type: set by the notifier"},
		{name: "notify_header Host", modify: func(h *Handler) { h.NotifyHeaders = http.Header{"host": {"evil.example.com"}} }, wantErr: "notify_header host: set by the notifier"},
		{name: "notify_header webhook-signature", modify: func(h *Handler) { h.NotifyHeaders = http.Header{"webhook-signature": {"v1,AA=="}} }, wantErr: "set by the notifier"},
		{name: "notify_header webhook-id", modify: func(h *Handler) { h.NotifyHeaders = http.Header{"Webhook-Id": {"msg_1"}} }, wantErr: "set by the notifier"},
		{name: "notify_secret not whsec_", modify: func(h *Handler) { h.NotifySecret = "s" }, wantErr: "notify_secret must be a Standard Webhooks signing secret, whsec_"},
		{name: "notify_secret without notify", modify: func(h *Handler) { h.Notify = "" }, wantErr: "notify, which is not set"},
		{name: "include_tokens without notify", modify: func(h *Handler) { h.Notify, h.NotifySecret, h.NotifyIncludeTokens = "", "", true }, wantErr: "notify, which is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := &Handler{TokenURL: "https://login.example.com/token", ClientID: "c",
				NotifyOptions: NotifyOptions{Notify: "https://platform.example.com/keys", NotifySecret: plainSecret}}
			tt.modify(h)
			h.setDefaults()
			err := h.Validate()
			if (err != nil) != (tt.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Validate() = %v; want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// The notify options: `notify <url>` and `notify_secret <secret>` take
// one argument, `notify_include_tokens` none, and `notify_header <name>
// <value>` two, repeatable.
func TestNotifyCaddyfile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		input   string
		want    Handler
		wantErr string
	}{
		{name: "notify", input: "notify https://p.example.com/keys", want: Handler{NotifyOptions: NotifyOptions{Notify: "https://p.example.com/keys"}}},
		{name: "notify placeholder", input: "notify {env.NOTIFY_URL}", want: Handler{NotifyOptions: NotifyOptions{Notify: "{env.NOTIFY_URL}"}}},
		{name: "notify without url", input: "notify", wantErr: "notify: want one argument, got 0"},
		{name: "two urls", input: "notify https://a.example.com https://b.example.com", wantErr: "notify: want one argument, got 2"},
		{name: "notify_secret", input: "notify_secret {env.NOTIFY_SECRET}", want: Handler{NotifyOptions: NotifyOptions{NotifySecret: "{env.NOTIFY_SECRET}"}}},
		{name: "notify_secret without value", input: "notify_secret", wantErr: "notify_secret: want one argument, got 0"},
		{name: "notify_include_tokens", input: "notify_include_tokens", want: Handler{NotifyOptions: NotifyOptions{NotifyIncludeTokens: true}}},
		{name: "notify_include_tokens with argument", input: "notify_include_tokens yes", wantErr: "wrong argument count"},
		{name: "notify_header", input: "notify_header Authorization \"Bearer {env.NOTIFY_KEY}\"\n notify_header X-Tenant a\n notify_header X-Tenant b",
			want: Handler{NotifyOptions: NotifyOptions{NotifyHeaders: http.Header{"Authorization": {"Bearer {env.NOTIFY_KEY}"}, "X-Tenant": {"a", "b"}}}}},
		{name: "notify_header without value", input: "notify_header Authorization", wantErr: "notify_header: want <name> <value>, got 1 arguments"},
		{name: "notify_header with two values", input: "notify_header X-A b c", wantErr: "notify_header: want <name> <value>, got 3 arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			input := "oauth2_upstream {\n " + tt.input + "\n}"
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", input, err, tt.wantErr)
				}
				return
			}
			got := h.NotifyOptions.config(keystore.ExtraFields{})
			if want := tt.want.NotifyOptions.config(keystore.ExtraFields{}); err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("UnmarshalCaddyfile(%q) = %+v, %v; want %+v", input, got, err, want)
			}
		})
	}
}
