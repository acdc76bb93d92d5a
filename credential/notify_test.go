package credential

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// A receiver that fails twice then succeeds gets every change, in order,
// after backoffs that double.
func TestNotifyRetriesFailingReceiver(t *testing.T) {
	t.Parallel()
	rcv := credentialtest.NewReceiver(t)
	rcv.FailNext = 2
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL})
	var backoffs []time.Duration // written by the one worker only, read after Close
	n.wait = func(ctx context.Context, d time.Duration) error {
		backoffs = append(backoffs, d)
		return ctx.Err()
	}
	for gen := int64(1); gen <= 3; gen++ {
		n.KeySetStored(&keystore.KeySet{Name: "notify-retry", Generation: gen, Token: credentialtest.TokenOf(t, `{"access_token":"a"}`)})
	}
	rcv.WaitFor(t, 3)
	n.Close()

	if got := credentialtest.Generations(rcv.Notifications(), "notify-retry"); !reflect.DeepEqual(got, []int64{1, 2, 3}) {
		t.Errorf("received generations %v; want [1 2 3]", got)
	}
	if want := []time.Duration{notifyMinBackoff, 2 * notifyMinBackoff}; !reflect.DeepEqual(backoffs, want) {
		t.Errorf("backoffs = %v; want %v", backoffs, want)
	}
	rcv.Mu.Lock()
	defer rcv.Mu.Unlock()
	if rcv.Attempts != 5 {
		t.Errorf("POSTs = %d; want 5 (two failures, three deliveries)", rcv.Attempts)
	}
}

// The backoff doubles up to its cap.
func TestNotifyBackoffIsCapped(t *testing.T) {
	t.Parallel()
	rcv := credentialtest.NewReceiver(t)
	rcv.FailNext = 6
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL})
	n.minBackoff, n.maxBackoff = time.Second, 5*time.Second
	var backoffs []time.Duration // written by the one worker only, read after close
	n.wait = func(ctx context.Context, d time.Duration) error {
		backoffs = append(backoffs, d)
		return ctx.Err()
	}
	n.KeySetStored(&keystore.KeySet{Name: "capped", Generation: 1, Token: credentialtest.TokenOf(t, `{"access_token":"a"}`)})
	rcv.WaitFor(t, 1)
	n.Close()
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second}
	if !reflect.DeepEqual(backoffs, want) {
		t.Errorf("backoffs = %v; want %v", backoffs, want)
	}
}

// A change the receiver refuses for good (a 4xx) is not retried, and does
// not hold up the next one.
func TestNotifyRefusedChangeIsSkipped(t *testing.T) {
	t.Parallel()
	rcv := credentialtest.NewReceiver(t)
	rcv.Refuse[1] = true
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL})
	n.wait = func(context.Context, time.Duration) error {
		t.Error("a refused change was retried")
		return nil
	}
	for gen := int64(1); gen <= 2; gen++ {
		n.KeySetStored(&keystore.KeySet{Name: "refused", Generation: gen, Token: credentialtest.TokenOf(t, `{"access_token":"a"}`)})
	}
	rcv.WaitFor(t, 1)
	n.Close()
	if got := credentialtest.Generations(rcv.Notifications(), "refused"); !reflect.DeepEqual(got, []int64{2}) {
		t.Errorf("accepted generations %v; want [2]", got)
	}
}

// A full queue keeps the newest changes, dropping the oldest waiting ones;
// another key set's changes go on while one key set's delivery is held.
func TestNotifyQueueKeepsNewest(t *testing.T) {
	t.Parallel()
	rcv := credentialtest.NewReceiver(t)
	rcv.Hold = "held"
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL})
	change := func(name string, gen int64) *keystore.KeySet {
		return &keystore.KeySet{Name: name, Generation: gen, Token: credentialtest.TokenOf(t, fmt.Sprintf(`{"access_token":"a-%d"}`, gen))}
	}
	n.KeySetStored(change("held", 1))
	if got := <-rcv.Arrived; got != "held" {
		t.Fatalf("first arrival for %q; want held", got)
	}
	last := int64(notifyQueueLimit + 3)
	for gen := int64(2); gen <= last; gen++ {
		n.KeySetStored(change("held", gen))
	}
	n.KeySetStored(change("free", 1))
	rcv.WaitFor(t, 1)
	if got := rcv.Notifications(); got[0].Name != "free" {
		t.Errorf("first delivery %s %d; want free 1 (not held up by another key set)", got[0].Name, got[0].Generation)
	}
	rcv.Unblock()
	rcv.WaitFor(t, 2+notifyQueueLimit)
	n.Close()

	want := []int64{1}
	for gen := int64(4); gen <= last; gen++ { // 2 and 3 were the oldest waiting
		want = append(want, gen)
	}
	if got := credentialtest.Generations(rcv.Notifications(), "held"); !reflect.DeepEqual(got, want) {
		t.Errorf("received generations %v; want %v", got, want)
	}
}

// Cleanup stops a notifier whose receiver never answers within the drain
// time, and changes after it are not queued.
func TestNotifyCloseIsBounded(t *testing.T) {
	t.Parallel()
	rcv := credentialtest.NewReceiver(t)
	rcv.Hold = "stuck"
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL})
	n.drainTime = 10 * time.Millisecond
	n.KeySetStored(&keystore.KeySet{Name: "stuck", Generation: 1, Token: credentialtest.TokenOf(t, `{"access_token":"a"}`)})
	n.KeySetStored(&keystore.KeySet{Name: "stuck", Generation: 2, Token: credentialtest.TokenOf(t, `{"access_token":"b"}`)})
	<-rcv.Arrived

	closed := make(chan struct{})
	go func() {
		n.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("close() did not return while the receiver held a delivery")
	}
	n.KeySetStored(&keystore.KeySet{Name: "late", Generation: 1, Token: credentialtest.TokenOf(t, `{"access_token":"c"}`)})
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.queues) != 0 {
		t.Errorf("queues after close = %v; want none", n.queues)
	}
}

// testSecret signs the deliveries of newTestNotifier unless its config has
// a secret of its own: whsec_ and the base64 of 32 bytes.
const testSecret = "whsec_bm90aWZ5LXRlc3Qtc2VjcmV0LTMyLWJ5dGVzLWxvbmc="

// newTestNotifier is NewNotifier(cfg), with testSecret when cfg has no
// secret.
func newTestNotifier(t *testing.T, cfg NotifyConfig) *Notifier {
	t.Helper()
	if cfg.Secret == "" {
		cfg.Secret = testSecret
	}
	n, err := NewNotifier(cfg, zap.NewNop())
	if err != nil {
		t.Fatalf("NewNotifier() = %v", err)
	}
	return n
}

// A notification carries no token value unless tokens are included: a
// receiver that only needs to know a key set changed (its generation, its
// expiry, its instance_url) never holds a credential. Extras are those the
// allow-list names: by default no api_key or tokens field (credentials a
// screen of secret-looking names let through), and never a token nested
// in an object (Slack's authed_user), even when named; a field added to
// the list is sent.
func TestNotifyPayload(t *testing.T) {
	t.Parallel()
	const response = `{"access_token":"AT-VALUE","refresh_token":"RT-VALUE","id_token":"ID-VALUE",` +
		`"token_type":"Bearer","expires_in":3600,"instance_url":"https://eu1.example.com",` +
		`"api_key":"AK-VALUE","tokens":"TOKENS-VALUE","team_ok":true,"authed_user":{"access_token":"NESTED-VALUE"}}`
	updated := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	expiry := updated.Add(time.Hour)
	secrets := []string{"AT-VALUE", "RT-VALUE", "ID-VALUE", "AK-VALUE", "TOKENS-VALUE", "NESTED-VALUE"}
	defaultExtra := map[string]string{"token_type": "Bearer", "expires_in": "3600", "instance_url": "https://eu1.example.com"}
	listed, err := keystore.NewExtraFields([]string{"instance_url", "team_ok", "authed_user"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		includeTokens bool
		extras        keystore.ExtraFields
		expiry        time.Time
		wantExtra     map[string]string
		wantTokens    bool
	}{
		{name: "default", expiry: expiry, wantExtra: defaultExtra},
		{name: "default, unknown expiry", wantExtra: defaultExtra},
		{name: "extra_fields", extras: listed, expiry: expiry,
			wantExtra: map[string]string{"instance_url": "https://eu1.example.com", "team_ok": "true"}},
		{name: "include_tokens", includeTokens: true, expiry: expiry, wantExtra: defaultExtra, wantTokens: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rcv := credentialtest.NewReceiver(t)
			n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL, IncludeTokens: tt.includeTokens, ExtraFields: tt.extras})
			token := credentialtest.TokenOf(t, response)
			n.KeySetStored(&keystore.KeySet{Name: "payload", Generation: 7, UpdatedAt: updated, Expiry: tt.expiry, Token: token})
			rcv.WaitFor(t, 1)
			n.Close()

			got, body := rcv.Notifications()[0], rcv.Bodies()[0]
			if got.Name != "payload" || got.Generation != 7 || !got.UpdatedAt.Equal(updated) || !got.Expiry.Equal(tt.expiry) {
				t.Errorf("notification = %s %d updated %v expiry %v; want payload 7 updated %v expiry %v",
					got.Name, got.Generation, got.UpdatedAt, got.Expiry, updated, tt.expiry)
			}
			if hasExpiry := strings.Contains(body, `"expiry"`); hasExpiry == tt.expiry.IsZero() {
				t.Errorf("body %s has expiry %v; want it only when the expiry is known", body, hasExpiry)
			}
			if !reflect.DeepEqual(got.Extra, tt.wantExtra) {
				t.Errorf("extra = %v; want %v", got.Extra, tt.wantExtra)
			}
			for _, secret := range secrets {
				if strings.Contains(body, secret) != tt.wantTokens {
					t.Errorf("body %s holds %s: %v; want %v", body, secret, !tt.wantTokens, tt.wantTokens)
				}
			}
			if tt.wantTokens && !credentialtest.SameJSON(got.Token, token) {
				t.Errorf("token = %v; want the whole response %s", got.Token, response)
			}
			if !tt.wantTokens && got.Token != nil {
				t.Errorf("token = %v; want none", got.Token)
			}
		})
	}
}

// Every delivery carries the Standard Webhooks headers, signed over its
// id, timestamp and exact body: the signature verifies with the notifier's
// secret, and with no other, nor over another body, id or timestamp.
func TestNotifySignature(t *testing.T) {
	t.Parallel()
	const secret = "whsec_cmlnaHQtc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXM="
	rcv := credentialtest.NewReceiver(t)
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL, Secret: secret})
	sent := time.Unix(1_790_000_000, 0)
	n.now = func() time.Time { return sent }
	n.KeySetStored(&keystore.KeySet{Name: "signed", Generation: 1, Token: credentialtest.TokenOf(t, `{"access_token":"a"}`)})
	rcv.WaitFor(t, 1)
	n.Close()

	d := rcv.Deliveries()[0]
	with := func(name, value string) http.Header {
		h := d.Header.Clone()
		h.Set(name, value)
		return h
	}
	tests := []struct {
		name    string
		header  http.Header
		secret  string
		body    []byte
		wantErr bool
	}{
		{name: "right secret", header: d.Header, secret: secret, body: d.Body},
		{name: "another secret", header: d.Header, secret: "whsec_d3Jvbmctc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXM=", body: d.Body, wantErr: true},
		{name: "altered body", header: d.Header, secret: secret, body: append([]byte(" "), d.Body...), wantErr: true},
		{name: "another id", header: with(WebhookIDHeader, "msg_other"), secret: secret, body: d.Body, wantErr: true},
		{name: "another timestamp", header: with(WebhookTimestampHeader, "1790000001"), secret: secret, body: d.Body, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := credentialtest.VerifyWebhook(tt.header, tt.body, tt.secret)
			if (err != nil) != tt.wantErr {
				t.Fatalf("VerifyWebhook(%v) = %v; want error %v", tt.header, err, tt.wantErr)
			}
			if err == nil && (got.Timestamp != sent.Unix() || !strings.HasPrefix(got.ID, "msg_")) {
				t.Errorf("verified %+v; want webhook-timestamp %d and a msg_ id", got, sent.Unix())
			}
		})
	}
}

// The signature is the Standard Webhooks one, byte for byte: the
// specification's Go library publishes this vector in
// libraries/go/webhook_test.go (TestWebhookSign, standard-webhooks v1.3.0):
// key whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, id
// msg_p5jXN8AQM9LWM0D4loKWxJek, timestamp 1614265330, payload
// {"test": 2432232314}, signature
// v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=.
func TestNotifySignatureMatchesSpecVector(t *testing.T) {
	t.Parallel()
	rcv := credentialtest.NewReceiver(t)
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL, Secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
	n.Close()
	got := n.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Errorf("sign() = %s; want the specification library's %s", got, want)
	}
}

// A retry is the same event: the same webhook-id and the same body bytes,
// with the time of that attempt, signed anew, so that a receiver that
// refuses stale timestamps still accepts a change delivered after a long
// backoff, and one that keeps the ids it processed sees it once.
func TestNotifyRetryKeepsIDAndIsSignedAnew(t *testing.T) {
	t.Parallel()
	rcv := credentialtest.NewReceiver(t)
	rcv.FailNext = 1
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL})
	clock := time.Unix(1_790_000_000, 0) // read and advanced by the one worker only
	n.now = func() time.Time {
		clock = clock.Add(time.Minute)
		return clock
	}
	n.wait = func(ctx context.Context, _ time.Duration) error { return ctx.Err() }
	n.KeySetStored(&keystore.KeySet{Name: "resigned", Generation: 1, Token: credentialtest.TokenOf(t, `{"access_token":"a"}`)})
	rcv.WaitFor(t, 1)
	n.Close()

	deliveries := rcv.Deliveries()
	if len(deliveries) != 2 {
		t.Fatalf("POSTs = %d; want 2 (a failure, then the delivery)", len(deliveries))
	}
	var got []credentialtest.Webhook
	for i, d := range deliveries {
		w, err := credentialtest.VerifyWebhook(d.Header, d.Body, testSecret)
		if err != nil {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
		got = append(got, w)
	}
	if got[0].ID != got[1].ID {
		t.Errorf("webhook-id %s, then %s on the retry; want the same", got[0].ID, got[1].ID)
	}
	if !bytes.Equal(deliveries[0].Body, deliveries[1].Body) {
		t.Errorf("retry body %s; want the first attempt's bytes %s", deliveries[1].Body, deliveries[0].Body)
	}
	if got[1].Timestamp <= got[0].Timestamp {
		t.Errorf("webhook-timestamps %d, %d; want the retry signed later than the first attempt", got[0].Timestamp, got[1].Timestamp)
	}
}

// Each event has an id of its own, whatever the key set and type: two
// generations of one key set, another key set, a failure.
func TestNotifyEventIDsDiffer(t *testing.T) {
	t.Parallel()
	rcv := credentialtest.NewReceiver(t)
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL})
	token := credentialtest.TokenOf(t, `{"access_token":"a"}`)
	n.KeySetStored(&keystore.KeySet{Name: "ids", Generation: 1, Token: token})
	n.KeySetStored(&keystore.KeySet{Name: "ids", Generation: 2, Token: token})
	n.KeySetStored(&keystore.KeySet{Name: "other-ids", Generation: 1, Token: token})
	n.KeySetStateChanged(StateChange{KeySet: "ids", Generation: 2, From: StateOK, To: StateFailing, ErrorCode: "server_error"})
	rcv.WaitFor(t, 4)
	n.Close()

	seen := map[string]bool{}
	for i, d := range rcv.Deliveries() {
		w, err := credentialtest.VerifyWebhook(d.Header, d.Body, testSecret)
		if err != nil {
			t.Fatalf("delivery %d: %v", i+1, err)
		}
		if seen[w.ID] || strings.Contains(w.ID, ".") {
			t.Errorf("delivery %d webhook-id %s: repeated, or holds a '.'; want one per event, dot-free", i+1, w.ID)
		}
		seen[w.ID] = true
	}
}

// notify_header values reach the receiver on every delivery, beside the
// headers the notifier sets itself.
func TestNotifyHeaders(t *testing.T) {
	t.Parallel()
	rcv := credentialtest.NewReceiver(t)
	header := http.Header{"authorization": {"Bearer receiver-key"}, "X-Tenant": {"a", "b"}}
	n := newTestNotifier(t, NotifyConfig{URL: rcv.Server.URL, Header: header})
	n.KeySetStored(&keystore.KeySet{Name: "headers", Generation: 1, Token: credentialtest.TokenOf(t, `{"access_token":"a"}`)})
	rcv.WaitFor(t, 1)
	n.Close()

	got := rcv.Deliveries()[0].Header
	tests := []struct {
		name string
		want []string
	}{
		{name: "Authorization", want: []string{"Bearer receiver-key"}},
		{name: "X-Tenant", want: []string{"a", "b"}},
		{name: "Content-Type", want: []string{"application/json"}},
	}
	for _, tt := range tests {
		if got := got.Values(tt.name); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("received %s = %q; want %q", tt.name, got, tt.want)
		}
	}
	if _, err := credentialtest.VerifyWebhook(got, rcv.Deliveries()[0].Body, testSecret); err != nil {
		t.Errorf("delivery with notify_header values: %v", err)
	}
}

// A notifier cannot be built unsigned, with a secret that is not a
// Standard Webhooks whsec_<base64> of 24 to 64 bytes, or with headers that
// are invalid or that it sets itself; errors name the option and never
// show a value.
func TestNotifyConfigValidate(t *testing.T) {
	t.Parallel()
	valid := func() NotifyConfig {
		return NotifyConfig{URL: "https://platform.example.com/keys", Secret: testSecret,
			Header: http.Header{"Authorization": {"Bearer VALUE"}}}
	}
	tests := []struct {
		name   string
		modify func(c *NotifyConfig)
		want   string // "" for a valid config
	}{
		{name: "valid", modify: func(*NotifyConfig) {}},
		{name: "include_tokens", modify: func(c *NotifyConfig) { c.IncludeTokens = true }},
		{name: "no secret", modify: func(c *NotifyConfig) { c.Secret = "" }, want: "notify_secret is required"},
		{name: "plain http elsewhere", modify: func(c *NotifyConfig) { c.URL = "http://platform.example.com/keys" }, want: "must be https"},
		{name: "header name with a space", modify: func(c *NotifyConfig) { c.Header.Set("Bad Header", "x") }, want: `notify_header "Bad Header": not a valid header field name`},
		{name: "empty header name", modify: func(c *NotifyConfig) { c.Header[""] = []string{"x"} }, want: "not a valid header field name"},
		{name: "Content-Type", modify: func(c *NotifyConfig) { c.Header["content-type"] = []string{"text/plain"} }, want: "notify_header content-type: set by the notifier"},
		{name: "Content-Length", modify: func(c *NotifyConfig) { c.Header.Set("Content-Length", "1") }, want: "notify_header Content-Length: set by the notifier"},
		{name: "Host", modify: func(c *NotifyConfig) { c.Header.Set("Host", "evil.example.com") }, want: "notify_header Host: set by the notifier"},
		{name: "webhook-id", modify: func(c *NotifyConfig) { c.Header["webhook-id"] = []string{"msg_1"} }, want: "notify_header webhook-id: set by the notifier"},
		{name: "webhook-timestamp", modify: func(c *NotifyConfig) { c.Header.Set(WebhookTimestampHeader, "1") }, want: "notify_header Webhook-Timestamp: set by the notifier"},
		{name: "webhook-signature", modify: func(c *NotifyConfig) { c.Header.Set(WebhookSignatureHeader, "v1,AA==") }, want: "notify_header Webhook-Signature: set by the notifier"},
		{name: "secret without whsec_", modify: func(c *NotifyConfig) { c.Secret = "bm90aWZ5LXRlc3Qtc2VjcmV0LTMyLWJ5dGVzLWxvbmc=" }, want: "whsec_$(openssl rand -base64 32)"},
		{name: "passphrase secret", modify: func(c *NotifyConfig) { c.Secret = "VALUE-passphrase" }, want: "notify_secret must be a Standard Webhooks signing secret"},
		{name: "whsec_ not base64", modify: func(c *NotifyConfig) { c.Secret = "whsec_VALUE!" }, want: "notify_secret must be a Standard Webhooks signing secret"},
		{name: "whsec_ key under 24 bytes", modify: func(c *NotifyConfig) { c.Secret = "whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 23)) }, want: "24 to 64 random bytes"},
		{name: "whsec_ key of 24 bytes", modify: func(c *NotifyConfig) { c.Secret = "whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 24)) }},
		{name: "whsec_ key of 64 bytes", modify: func(c *NotifyConfig) { c.Secret = "whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 64)) }},
		{name: "whsec_ key over 64 bytes", modify: func(c *NotifyConfig) { c.Secret = "whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 65)) }, want: "24 to 64 random bytes"},
		{name: "value with a newline", modify: func(c *NotifyConfig) { c.Header.Set("X-Key", "VALUE\r\nX-Injected: 1") }, want: "notify_header X-Key: the value is not a valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := valid()
			tt.modify(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v; want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v; want an error containing %q", err, tt.want)
			case err != nil && (strings.Contains(err.Error(), "VALUE") || (c.Secret != "" && strings.Contains(err.Error(), c.Secret))):
				t.Errorf("Validate() = %v; shows a header value or the secret", err)
			}
			n, err := NewNotifier(c, zap.NewNop())
			if (err != nil) != (tt.want != "") {
				t.Errorf("NewNotifier() = %v; want error %v", err, tt.want != "")
			}
			if n != nil {
				n.Close()
			}
		})
	}
}
