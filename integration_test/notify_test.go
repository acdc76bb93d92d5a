package integration_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// webhookSecret is the notify_secret of the notification scenario: whsec_
// and the base64 of 32 bytes, the form the Standard Webhooks libraries
// take.
const webhookSecret = "whsec_bm90aWZ5LWUyZS1zZWNyZXQtb2YtMzItYnl0ZXMtISE="

// webhookDelivery is one POST as the receiver saw it.
type webhookDelivery struct {
	header http.Header
	body   []byte
}

// Notifications verify with the Standard Webhooks specification's own Go
// library (github.com/standard-webhooks/standard-webhooks/libraries, its
// timestamp tolerance included), not with this project's code: the
// sidecar's seed and its first grant are announced, the first delivery is
// answered 503 and retried with the same webhook-id and body, and the two
// events have different ids.
func TestNotifyStandardWebhooks(t *testing.T) {
	t.Parallel()
	arrived := make(chan webhookDelivery, 16)
	var answered atomic.Bool
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading a notification: %v", err)
		}
		arrived <- webhookDelivery{header: r.Header.Clone(), body: body}
		if !answered.Swap(true) {
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(receiver.Close)

	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	_, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seedToken(t, auth),
		options: []string{"notify " + receiver.URL, "notify_secret {env.NOTIFY_SECRET}"},
		env:     []string{"NOTIFY_SECRET=" + webhookSecret},
	})
	if r := get(newClient(t, 1), sc.URL()+"/x"); r.status != http.StatusOK { // the seed (1), a grant (2)
		t.Fatalf("request: %s; want 200", r)
	}

	var got []webhookDelivery
	timeout := time.After(30 * time.Second)
	for len(got) < 3 { // the seed's refused attempt, its retry, the grant
		select {
		case d := <-arrived:
			got = append(got, d)
		case <-timeout:
			t.Fatalf("got %d notifications; want 3", len(got))
		}
	}
	wh, err := standardwebhooks.NewWebhook(webhookSecret)
	if err != nil {
		t.Fatalf("standardwebhooks.NewWebhook() = %v", err)
	}
	for i, d := range got {
		if err := wh.Verify(d.body, d.header); err != nil {
			t.Errorf("notification %d (%s): the Standard Webhooks library refuses it: %v", i+1, d.body, err)
		}
	}
	if err := wh.Verify(append(bytes.Clone(got[0].body), ' '), got[0].header); err == nil {
		t.Error("the library accepted an altered body; the verification proves nothing")
	}
	id := func(d webhookDelivery) string { return d.header.Get(standardwebhooks.HeaderWebhookID) }
	if id(got[0]) != id(got[1]) || !bytes.Equal(got[0].body, got[1].body) {
		t.Errorf("retry = id %s body %s; want the first attempt's id %s and body %s", id(got[1]), got[1].body, id(got[0]), got[0].body)
	}
	if id(got[2]) == id(got[0]) {
		t.Errorf("the grant's notification has the seed's webhook-id %s; want an id per event", id(got[2]))
	}
}

// extra_fields, given in the Caddyfile, names what a notification's
// "extra" holds: the fields it lists, not a credential under a name a
// screen of secret-looking names would miss (api_key), nor a default it
// leaves out (scope).
func TestNotifyExtraFieldsAllowList(t *testing.T) {
	t.Parallel()
	arrived := make(chan []byte, 16)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading a notification: %v", err)
		}
		arrived <- body
	}))
	t.Cleanup(receiver.Close)

	const apiKey = "e2e-api-key-value"
	auth := newAuthServer(t, authserver.Config{Profile: authserver.Profile{ExtraFields: map[string]string{"tenant": "acme", "api_key": apiKey}}})
	api := newResourceServer(t, auth)
	_, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seedToken(t, auth),
		options: []string{"notify " + receiver.URL, "notify_secret {env.NOTIFY_SECRET}", "extra_fields tenant token_type"},
		env:     []string{"NOTIFY_SECRET=" + webhookSecret},
	})
	if r := get(newClient(t, 1), sc.URL()+"/x"); r.status != http.StatusOK { // the seed (1), a grant (2)
		t.Fatalf("request: %s; want 200", r)
	}

	type notification struct {
		Generation int64             `json:"generation"`
		Extra      map[string]string `json:"extra"`
	}
	var grant notification
	timeout := time.After(30 * time.Second)
	for grant.Generation != 2 {
		select {
		case body := <-arrived:
			if bytes.Contains(body, []byte(apiKey)) {
				t.Fatalf("notification %s holds the api_key value", body)
			}
			var n notification
			if err := json.Unmarshal(body, &n); err != nil {
				t.Fatalf("notification %s: %v", body, err)
			}
			grant = n
		case <-timeout:
			t.Fatal("no notification of the grant")
		}
	}
	if want := map[string]string{"tenant": "acme", "token_type": "bearer"}; !reflect.DeepEqual(grant.Extra, want) {
		t.Errorf("grant's extra = %v; want %v (what extra_fields names)", grant.Extra, want)
	}
}
