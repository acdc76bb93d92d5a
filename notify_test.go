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
)

// Every stored change is POSTed once, in order, with the whole token
// response: the seed, a grant, a refresh after a
// 401, and an admin PUT; Cleanup delivers what is still pending.
func TestNotifyDeliversEachChangeInOrder(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Extra = map[string]any{"instance_url": "https://eu1.example.com"}
	api := newAPIServer(t, "Bearer at-1")
	rcv := credentialtest.NewReceiver(t)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "notify-order", RefreshToken: "rt-0", Notify: rcv.Server.URL},
		hostPort(t, api.server.URL))
	a, _ := adminFor(s.handler)

	s.get(t, "/first") // seed (1), grant (2)
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
		Notify: rcv.Server.URL}, hostPort(t, api.URL))

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

// notify must be https, or http to a loopback host: the body carries the
// tokens.
func TestNotifyValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url     string
		wantErr bool
	}{
		{url: "https://platform.example.com/oauth2/keys"},
		{url: "http://127.0.0.1:9000/keys"},
		{url: "http://localhost/keys"},
		{url: "http://[::1]:8080/keys"},
		{url: "http://platform.example.com/keys", wantErr: true},
		{url: "ftp://127.0.0.1/keys", wantErr: true},
		{url: "/keys", wantErr: true},
		{url: "https://user:pass@platform.example.com/keys", wantErr: true},
	}
	for _, tt := range tests {
		h := &Handler{TokenURL: "https://login.example.com/token", ClientID: "c", Notify: tt.url}
		h.setDefaults()
		if err := h.Validate(); (err != nil) != tt.wantErr {
			t.Errorf("Validate() with notify %q = %v; want error %v", tt.url, err, tt.wantErr)
		}
	}
}

// `notify <url>` takes exactly one argument.
func TestNotifyCaddyfile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		input   string
		want    string
		wantErr bool
	}{
		{input: "oauth2_upstream {\n notify https://p.example.com/keys\n}", want: "https://p.example.com/keys"},
		{input: "oauth2_upstream {\n notify {env.NOTIFY_URL}\n}", want: "{env.NOTIFY_URL}"},
		{input: "oauth2_upstream {\n notify\n}", wantErr: true},
		{input: "oauth2_upstream {\n notify https://a.example.com https://b.example.com\n}", wantErr: true},
	}
	for _, tt := range tests {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
		if (err != nil) != tt.wantErr || (!tt.wantErr && h.Notify != tt.want) {
			t.Errorf("UnmarshalCaddyfile(%q) = notify %q, %v; want %q, error %v", tt.input, h.Notify, err, tt.want, tt.wantErr)
		}
	}
}
