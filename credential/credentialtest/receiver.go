package credentialtest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Notification is the body a notify receiver gets, as the receiver decodes
// it. Expiry and RefreshExpiry are zero when the body has none; Token is
// nil unless the notifier includes tokens.
type Notification struct {
	Type          string            `json:"type"`
	Name          string            `json:"name"`
	Generation    int64             `json:"generation"`
	UpdatedAt     time.Time         `json:"updated_at"`
	Expiry        time.Time         `json:"expiry"`
	RefreshExpiry time.Time         `json:"refresh_expiry"`
	Extra         map[string]string `json:"extra"`
	Token         keystore.Token    `json:"token"`
	State         string            `json:"state"`
	ErrorCode     string            `json:"error_code"`
}

// Delivery is one POST as the receiver saw it, whatever it answered.
type Delivery struct {
	Header http.Header
	Body   []byte
}

// Webhook is what a receiver learns of a delivery once its Standard
// Webhooks signature checks out.
type Webhook struct {
	ID        string // webhook-id
	Timestamp int64  // webhook-timestamp, Unix seconds
}

// VerifyWebhook checks a delivery the way the Standard Webhooks
// specification 1.0.0 tells a receiver to ("Signature scheme" and
// "Verifying signatures",
// https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md),
// written from the specification rather than from the notifier: the key
// is the base64 after secret's whsec_ prefix; webhook-signature is a
// space-separated list of <version>,<base64>, and one v1 entry must equal,
// compared in constant time, the base64 HMAC-SHA256 of
// "<webhook-id>.<webhook-timestamp>.<body>". It checks no tolerance: tests
// run on a clock of their own; callers compare Timestamp.
func VerifyWebhook(header http.Header, body []byte, secret string) (Webhook, error) {
	id, stamp, signatures := header.Get("webhook-id"), header.Get("webhook-timestamp"), header.Get("webhook-signature")
	if id == "" || stamp == "" || signatures == "" {
		return Webhook{}, fmt.Errorf("missing webhook-id, webhook-timestamp or webhook-signature")
	}
	ts, err := strconv.ParseInt(stamp, 10, 64)
	if err != nil {
		return Webhook{}, fmt.Errorf("webhook-timestamp %q: not Unix seconds", stamp)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return Webhook{}, fmt.Errorf("decoding the secret: %w", err)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + stamp + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, versioned := range strings.Fields(signatures) {
		version, encoded, _ := strings.Cut(versioned, ",")
		got, err := base64.StdEncoding.DecodeString(encoded)
		if version == "v1" && err == nil && hmac.Equal(got, want) {
			return Webhook{ID: id, Timestamp: ts}, nil
		}
	}
	return Webhook{}, fmt.Errorf("webhook-signature %q: no v1 signature matches the body", signatures)
}

// Receiver is a notification receiver: it records what it accepts and can
// fail, refuse or hold deliveries.
type Receiver struct {
	Server *httptest.Server
	// Arrived gets the key set name of every POST as it arrives.
	Arrived chan string

	Mu       sync.Mutex // guards the fields below
	FailNext int        // answer 503 to this many more POSTs
	Refuse   map[int64]bool
	Hold     string // POSTs for this key set wait until Unblock
	Attempts int
	Bad      []string // requests that were not a proper notification
	got      []Notification
	raw      []string
	seen     []Delivery
	release  chan struct{}
}

// NewReceiver starts a receiver that accepts every notification.
func NewReceiver(t testing.TB) *Receiver {
	rcv := &Receiver{Arrived: make(chan string, 1024), Refuse: map[int64]bool{}, release: make(chan struct{})}
	rcv.Server = httptest.NewServer(http.HandlerFunc(rcv.serve))
	t.Cleanup(rcv.Server.Close)
	t.Cleanup(rcv.Unblock) // before the server closes: Close waits for handlers
	return rcv
}

// Unblock releases the deliveries that Hold holds, and every later one.
func (rcv *Receiver) Unblock() {
	rcv.Mu.Lock()
	defer rcv.Mu.Unlock()
	select {
	case <-rcv.release:
	default:
		close(rcv.release)
	}
}

func (rcv *Receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var n Notification
	err := json.Unmarshal(body, &n)
	rcv.Arrived <- n.Name
	rcv.Mu.Lock()
	rcv.Attempts++
	rcv.seen = append(rcv.seen, Delivery{Header: r.Header.Clone(), Body: body})
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || err != nil {
		rcv.Bad = append(rcv.Bad, fmt.Sprintf("%s %s %q", r.Method, r.Header.Get("Content-Type"), body))
	}
	hold, release := rcv.Hold == n.Name, rcv.release
	rcv.Mu.Unlock()
	if hold {
		<-release
	}
	rcv.Mu.Lock()
	defer rcv.Mu.Unlock()
	switch {
	case rcv.FailNext > 0:
		rcv.FailNext--
		http.Error(w, "busy", http.StatusServiceUnavailable)
	case rcv.Refuse[n.Generation]:
		http.Error(w, "no", http.StatusBadRequest)
	default:
		rcv.got = append(rcv.got, n)
		rcv.raw = append(rcv.raw, string(body))
	}
}

// Notifications returns the accepted notifications, in arrival order.
func (rcv *Receiver) Notifications() []Notification {
	rcv.Mu.Lock()
	defer rcv.Mu.Unlock()
	return append([]Notification(nil), rcv.got...)
}

// Bodies returns the accepted notifications' bodies, verbatim.
func (rcv *Receiver) Bodies() []string {
	rcv.Mu.Lock()
	defer rcv.Mu.Unlock()
	return append([]string(nil), rcv.raw...)
}

// Deliveries returns every POST the receiver got, in arrival order,
// refused and failed ones included.
func (rcv *Receiver) Deliveries() []Delivery {
	rcv.Mu.Lock()
	defer rcv.Mu.Unlock()
	return append([]Delivery(nil), rcv.seen...)
}

// WaitFor waits until the receiver accepted n notifications.
func (rcv *Receiver) WaitFor(t testing.TB, n int) {
	t.Helper()
	Eventually(t, fmt.Sprintf("%d notifications", n), func() bool { return len(rcv.Notifications()) >= n })
}

// Generations lists the generations of key set name in got.
func Generations(got []Notification, name string) []int64 {
	var out []int64
	for _, n := range got {
		if n.Name == name {
			out = append(out, n.Generation)
		}
	}
	return out
}

// TokenOf decodes a token response written as JSON.
func TokenOf(t testing.TB, s string) keystore.Token {
	t.Helper()
	var tok keystore.Token
	if err := json.Unmarshal([]byte(s), &tok); err != nil {
		t.Fatal(err)
	}
	return tok
}

// SameJSON reports whether two tokens hold the same JSON values.
func SameJSON(a, b keystore.Token) bool {
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

// Eventually polls cond until it holds or a deadline passes. It is for
// conditions that nothing signals (another goroutine's progress seen
// through a public method).
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}
