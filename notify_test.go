package oauth2upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// receiver is a notification receiver: it records what it accepts and can
// fail, refuse or hold deliveries.
type receiver struct {
	server *httptest.Server
	// arrived gets the key set name of every POST as it arrives.
	arrived chan string

	mu       sync.Mutex // guards the fields below
	got      []notification
	raw      []string
	failNext int            // answer 503 to this many more POSTs
	refuse   map[int64]bool // generations answered 400
	hold     string         // POSTs for this key set wait until release is closed
	release  chan struct{}
	attempts int
	bad      []string // requests that were not a proper notification
}

func newReceiver(t *testing.T) *receiver {
	rcv := &receiver{arrived: make(chan string, 1024), refuse: map[int64]bool{}, release: make(chan struct{})}
	rcv.server = httptest.NewServer(http.HandlerFunc(rcv.serve))
	t.Cleanup(rcv.server.Close)
	t.Cleanup(rcv.unblock) // before the server closes: Close waits for handlers
	return rcv
}

func (rcv *receiver) unblock() {
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	select {
	case <-rcv.release:
	default:
		close(rcv.release)
	}
}

func (rcv *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var n notification
	err := json.Unmarshal(body, &n)
	rcv.arrived <- n.Name
	rcv.mu.Lock()
	rcv.attempts++
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || err != nil {
		rcv.bad = append(rcv.bad, fmt.Sprintf("%s %s %q", r.Method, r.Header.Get("Content-Type"), body))
	}
	hold, release := rcv.hold == n.Name, rcv.release
	rcv.mu.Unlock()
	if hold {
		<-release
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	switch {
	case rcv.failNext > 0:
		rcv.failNext--
		http.Error(w, "busy", http.StatusServiceUnavailable)
	case rcv.refuse[n.Generation]:
		http.Error(w, "no", http.StatusBadRequest)
	default:
		rcv.got = append(rcv.got, n)
		rcv.raw = append(rcv.raw, string(body))
	}
}

func (rcv *receiver) notifications() []notification {
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	return append([]notification(nil), rcv.got...)
}

func (rcv *receiver) bodies() []string {
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	return append([]string(nil), rcv.raw...)
}

// waitFor waits until the receiver accepted n notifications.
func (rcv *receiver) waitFor(t *testing.T, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d notifications", n), func() bool { return len(rcv.notifications()) >= n })
}

// generations lists the generations of key set name the receiver accepted.
func generations(got []notification, name string) []int64 {
	var out []int64
	for _, n := range got {
		if n.Name == name {
			out = append(out, n.Generation)
		}
	}
	return out
}

// tokenOf decodes a token response written as JSON.
func tokenOf(t *testing.T, s string) keystore.Token {
	t.Helper()
	var tok keystore.Token
	if err := json.Unmarshal([]byte(s), &tok); err != nil {
		t.Fatal(err)
	}
	return tok
}

// sameJSON reports whether two tokens hold the same JSON values.
func sameJSON(a, b keystore.Token) bool {
	decode := func(t keystore.Token) map[string]any {
		out := make(map[string]any, len(t))
		for k, v := range t {
			var x any
			json.Unmarshal(v, &x)
			out[k] = x
		}
		return out
	}
	return reflect.DeepEqual(decode(a), decode(b))
}

// Every stored change is POSTed once, in order, with the whole token
// response (the seed's "updateKeys"): the seed, a grant, a refresh after a
// 401, and an admin PUT; Cleanup delivers what is still pending.
func TestNotifyDeliversEachChangeInOrder(t *testing.T) {
	t.Parallel()
	te := newTokenEndpoint(t, "rt-0")
	te.extra = map[string]any{"instance_url": "https://eu1.example.com"}
	api := newAPIServer(t, "Bearer at-1")
	rcv := newReceiver(t)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "notify-order", RefreshToken: "rt-0", Notify: rcv.server.URL},
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

	got := rcv.notifications()
	want := []notification{
		{Name: "notify-order", Generation: 1, Token: tokenOf(t, `{"refresh_token":"rt-0"}`)},
		{Name: "notify-order", Generation: 2, Token: tokenOf(t, `{"access_token":"at-1","refresh_token":"rt-1","token_type":"Bearer","expires_in":3600,"instance_url":"https://eu1.example.com"}`)},
		{Name: "notify-order", Generation: 3, Token: tokenOf(t, `{"access_token":"at-2","refresh_token":"rt-2","token_type":"Bearer","expires_in":3600,"instance_url":"https://eu1.example.com"}`)},
		{Name: "notify-order", Generation: 4, Token: tokenOf(t, put)},
	}
	if len(got) != len(want) {
		t.Fatalf("received generations %v; want 1, 2, 3, 4, each once", generations(got, "notify-order"))
	}
	for i := range want {
		if got[i].Name != want[i].Name || got[i].Generation != want[i].Generation || !sameJSON(got[i].Token, want[i].Token) {
			t.Errorf("notification %d = %s %d %v; want %s %d %v", i, got[i].Name, got[i].Generation, got[i].Token,
				want[i].Name, want[i].Generation, want[i].Token)
		}
	}
	if raw := rcv.bodies(); len(raw) == 4 && !strings.Contains(raw[3], `"put<&>"`) {
		t.Errorf("PUT notification body %s; want the token's exact text (no HTML escaping)", raw[3])
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if len(rcv.bad) != 0 {
		t.Errorf("improper notification requests: %v", rcv.bad)
	}
}

// A receiver that fails twice then succeeds gets every change, in order,
// after backoffs that double.
func TestNotifyRetriesFailingReceiver(t *testing.T) {
	t.Parallel()
	te := newTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	rcv := newReceiver(t)
	rcv.failNext = 2
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "notify-retry", RefreshToken: "rt-0", Notify: rcv.server.URL},
		hostPort(t, api.server.URL))
	var mu sync.Mutex // guards backoffs
	var backoffs []time.Duration
	s.handler.ops.notifier.wait = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		backoffs = append(backoffs, d)
		mu.Unlock()
		return ctx.Err()
	}

	s.get(t, "/first") // seed (1), grant (2)
	api.setValid("Bearer at-2")
	s.get(t, "/second") // grant (3)
	rcv.waitFor(t, 3)

	if got := generations(rcv.notifications(), "notify-retry"); !reflect.DeepEqual(got, []int64{1, 2, 3}) {
		t.Errorf("received generations %v; want [1 2 3]", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []time.Duration{notifyMinBackoff, 2 * notifyMinBackoff}; !reflect.DeepEqual(backoffs, want) {
		t.Errorf("backoffs = %v; want %v", backoffs, want)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if rcv.attempts != 5 {
		t.Errorf("POSTs = %d; want 5 (two failures, three deliveries)", rcv.attempts)
	}
}

// The backoff doubles up to its cap.
func TestNotifyBackoffIsCapped(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	rcv.failNext = 6
	n := newNotifier(rcv.server.URL, zap.NewNop())
	n.minBackoff, n.maxBackoff = time.Second, 5*time.Second
	var backoffs []time.Duration // written by the one worker only, read after close
	n.wait = func(ctx context.Context, d time.Duration) error {
		backoffs = append(backoffs, d)
		return ctx.Err()
	}
	n.keySetStored(&keystore.KeySet{Name: "capped", Generation: 1, Token: tokenOf(t, `{"access_token":"a"}`)})
	rcv.waitFor(t, 1)
	n.close()
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second}
	if !reflect.DeepEqual(backoffs, want) {
		t.Errorf("backoffs = %v; want %v", backoffs, want)
	}
}

// A change the receiver refuses for good (a 4xx) is not retried, and does
// not hold up the next one.
func TestNotifyRefusedChangeIsSkipped(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	rcv.refuse[1] = true
	n := newNotifier(rcv.server.URL, zap.NewNop())
	n.wait = func(context.Context, time.Duration) error {
		t.Error("a refused change was retried")
		return nil
	}
	for gen := int64(1); gen <= 2; gen++ {
		n.keySetStored(&keystore.KeySet{Name: "refused", Generation: gen, Token: tokenOf(t, `{"access_token":"a"}`)})
	}
	rcv.waitFor(t, 1)
	n.close()
	if got := generations(rcv.notifications(), "refused"); !reflect.DeepEqual(got, []int64{2}) {
		t.Errorf("accepted generations %v; want [2]", got)
	}
}

// A slow receiver does not slow requests: with every request making a
// grant (refresh always), requests complete while the receiver holds the
// first notification; then every change arrives, in order.
func TestNotifySlowReceiverDoesNotHoldRequests(t *testing.T) {
	t.Parallel()
	te := newTokenEndpoint(t, "rt-0")
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(api.Close)
	rcv := newReceiver(t)
	rcv.hold = "notify-slow"
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "notify-slow", RefreshToken: "rt-0", Refresh: modeAlways,
		Notify: rcv.server.URL}, hostPort(t, api.URL))

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
	if got := <-rcv.arrived; got != "notify-slow" {
		t.Fatalf("first notification for %q; want notify-slow", got)
	}
	if got := rcv.notifications(); len(got) != 0 {
		t.Fatalf("receiver accepted %d while held; want 0", len(got))
	}
	rcv.unblock()
	rcv.waitFor(t, 6)
	if got := generations(rcv.notifications(), "notify-slow"); !reflect.DeepEqual(got, []int64{1, 2, 3, 4, 5, 6}) {
		t.Errorf("received generations %v; want [1 2 3 4 5 6] (the seed and five grants)", got)
	}
}

// A full queue keeps the newest changes, dropping the oldest waiting ones;
// another key set's changes go on while one key set's delivery is held.
func TestNotifyQueueKeepsNewest(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	rcv.hold = "held"
	n := newNotifier(rcv.server.URL, zap.NewNop())
	change := func(name string, gen int64) *keystore.KeySet {
		return &keystore.KeySet{Name: name, Generation: gen, Token: tokenOf(t, fmt.Sprintf(`{"access_token":"a-%d"}`, gen))}
	}
	n.keySetStored(change("held", 1))
	if got := <-rcv.arrived; got != "held" {
		t.Fatalf("first arrival for %q; want held", got)
	}
	last := int64(notifyQueueLimit + 3)
	for gen := int64(2); gen <= last; gen++ {
		n.keySetStored(change("held", gen))
	}
	n.keySetStored(change("free", 1))
	rcv.waitFor(t, 1)
	if got := rcv.notifications(); got[0].Name != "free" {
		t.Errorf("first delivery %s %d; want free 1 (not held up by another key set)", got[0].Name, got[0].Generation)
	}
	rcv.unblock()
	rcv.waitFor(t, 2+notifyQueueLimit)
	n.close()

	want := []int64{1}
	for gen := int64(4); gen <= last; gen++ { // 2 and 3 were the oldest waiting
		want = append(want, gen)
	}
	if got := generations(rcv.notifications(), "held"); !reflect.DeepEqual(got, want) {
		t.Errorf("received generations %v; want %v", got, want)
	}
}

// Cleanup stops a notifier whose receiver never answers within the drain
// time, and changes after it are not queued.
func TestNotifyCloseIsBounded(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	rcv.hold = "stuck"
	n := newNotifier(rcv.server.URL, zap.NewNop())
	n.drainTime = 10 * time.Millisecond
	n.keySetStored(&keystore.KeySet{Name: "stuck", Generation: 1, Token: tokenOf(t, `{"access_token":"a"}`)})
	n.keySetStored(&keystore.KeySet{Name: "stuck", Generation: 2, Token: tokenOf(t, `{"access_token":"b"}`)})
	<-rcv.arrived

	closed := make(chan struct{})
	go func() {
		n.close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("close() did not return while the receiver held a delivery")
	}
	n.keySetStored(&keystore.KeySet{Name: "late", Generation: 1, Token: tokenOf(t, `{"access_token":"c"}`)})
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.queues) != 0 {
		t.Errorf("queues after close = %v; want none", n.queues)
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
