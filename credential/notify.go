package credential

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Bounds of change notification delivery.
const (
	// notifyQueueLimit is how many changes of one key set may wait while
	// an earlier one is being delivered. When a change arrives at a full
	// queue the oldest waiting change is dropped: the newest key set is
	// the one a platform needs, and it is never dropped.
	notifyQueueLimit = 64
	// notifyTimeout bounds one POST.
	notifyTimeout = 10 * time.Second
	// A failed delivery is retried after a backoff that doubles from
	// notifyMinBackoff up to notifyMaxBackoff, as long as the handler runs.
	notifyMinBackoff = time.Second
	notifyMaxBackoff = time.Minute
	// notifyDrainTime is how long Cleanup waits for pending changes to be
	// delivered before it abandons them (a config reload waits that long
	// at most for a receiver that is down).
	notifyDrainTime = 5 * time.Second
	// notifyMaxAnswer is how much of the receiver's answer is read (and
	// discarded) so that the connection can be reused.
	notifyMaxAnswer = 64 << 10
)

// Types of notification (its "type" field).
const (
	// eventUpdated announces a new generation. Only the process that
	// stored it sends it, so it is sent once per generation however many
	// replicas share the keystore.
	eventUpdated = "key_set.updated"
	// eventFailed announces that a key set entered a state that needs
	// attention (failing, needs_reauthorization, keystore_failing), as
	// this process sees it.
	eventFailed = "key_set.failed"
	// eventRecovered announces that a key set that needed attention is
	// healthy again.
	eventRecovered = "key_set.recovered"
	// eventExpiring announces, once per generation as this process sees
	// it, that a key set's refresh token expires soon and no refresh will
	// put that off (RefreshWarning).
	eventExpiring = "key_set.expiring"
)

// notification is the body POSTed to the notify URL for each event. By
// default it carries no token value: the key set's bookkeeping, and for
// key_set.updated the extras that placeholders may show too
// (NotifyConfig.ExtraFields, the handler's extra_fields). Token, the provider's whole token response, is
// there only in key_set.updated and only when the receiver asked for it
// (NotifyConfig.IncludeTokens); the body is never logged.
type notification struct {
	Type       string    `json:"type"`
	Name       string    `json:"name"`
	Generation int64     `json:"generation"`
	UpdatedAt  time.Time `json:"updated_at,omitzero"`
	Expiry     time.Time `json:"expiry,omitzero"`
	// RefreshExpiry is when the refresh token expires, when the provider
	// announced it: in key_set.updated and key_set.expiring.
	RefreshExpiry time.Time         `json:"refresh_expiry,omitzero"`
	Extra         map[string]string `json:"extra,omitzero"`
	Token         keystore.Token    `json:"token,omitempty"`
	// State and ErrorCode are those of key_set.failed and
	// key_set.recovered: the state entered, and the failure's code.
	State     string    `json:"state,omitempty"`
	ErrorCode string    `json:"error_code,omitempty"`
	At        time.Time `json:"at,omitzero"`
}

// event is one notification waiting for delivery: a stored key set, a
// refresh token expiring soon, or a change of state.
type event struct {
	// id is the event's webhook-id: drawn when the event happens, sent
	// unchanged on every attempt to deliver it, so that a receiver can use
	// it as the idempotency key the Standard Webhooks specification
	// describes ("Webhook metadata": it "remains the same no matter how
	// many times a webhook that has failed is retried").
	id       string
	stored   *keystore.KeySet // key_set.updated; nil for a change of state
	expiring *RefreshWarning  // key_set.expiring; nil for the others
	change   StateChange
}

// newEventID returns a webhook-id that no other event has: "msg_" (the
// specification's examples' prefix) and 130 random bits in base32. It
// holds no '.', which the specification forbids in the id since the
// signed content joins id, timestamp and body with dots.
func newEventID() string { return "msg_" + rand.Text() }

func (ev event) generation() int64 {
	switch {
	case ev.stored != nil:
		return ev.stored.Generation
	case ev.expiring != nil:
		return ev.expiring.Generation
	}
	return ev.change.Generation
}

// Notifier POSTs every key set this process stores (key_set.updated),
// every failure and recovery it sees (key_set.failed, key_set.recovered)
// and every refresh token it sees expire soon (key_set.expiring) to a URL, in order per key set, without holding up the refresher: its
// Observer methods only queue. Each key set with changes to deliver has one worker goroutine,
// which exits when its queue is empty, so a later generation never
// overtakes an earlier one.
type Notifier struct {
	url           string
	key           []byte // the HMAC key: notify_secret, decoded
	includeTokens bool
	extras        keystore.ExtraFields
	header        http.Header // added to every delivery; read-only
	client        *http.Client
	logger        *zap.Logger
	// now stamps each attempt's signature; tests replace it.
	now func() time.Time

	minBackoff, maxBackoff time.Duration
	drainTime              time.Duration
	// wait sleeps for a backoff, or returns ctx's error when it ends
	// first; tests replace it.
	wait func(ctx context.Context, d time.Duration) error

	ctx     context.Context // ends when the notifier stops: deliveries are abandoned
	cancel  context.CancelFunc
	workers sync.WaitGroup

	mu sync.Mutex // guards queues and closed
	// queues holds the events waiting per key set, oldest first. A name
	// is present, even with no event waiting, while its worker runs.
	queues map[string][]event
	closed bool
}

// NewNotifier returns a Notifier configured by cfg, which must be valid
// (see NotifyConfig.Validate).
func NewNotifier(cfg NotifyConfig, logger *zap.Logger) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	key, err := webhookKey(cfg.Secret)
	if err != nil {
		return nil, err
	}
	header := make(http.Header, len(cfg.Header))
	for name, values := range cfg.Header {
		for _, v := range values {
			header.Add(name, v) // canonical names: post sets them as they are
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	transport := http.DefaultTransport.(*http.Transport).Clone()
	return &Notifier{
		url:           cfg.URL,
		key:           key,
		includeTokens: cfg.IncludeTokens,
		extras:        cfg.ExtraFields,
		header:        header,
		client: &http.Client{
			Transport: transport,
			Timeout:   notifyTimeout,
			// A redirect could carry the headers (and the tokens, when
			// included) to another host, or to plain http: a 3xx is a
			// failed delivery.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		logger:     logger,
		now:        time.Now,
		minBackoff: notifyMinBackoff,
		maxBackoff: notifyMaxBackoff,
		drainTime:  notifyDrainTime,
		wait:       waitFor,
		ctx:        ctx,
		cancel:     cancel,
		queues:     make(map[string][]event),
	}, nil
}

// KeySetStored queues key_set.updated for ks; it never blocks.
func (n *Notifier) KeySetStored(ks *keystore.KeySet) {
	n.enqueue(ks.Name, event{id: newEventID(), stored: ks})
}

// KeySetStateChanged queues key_set.failed or key_set.recovered when the
// change is one; it never blocks.
func (n *Notifier) KeySetStateChanged(change StateChange) {
	if change.failed() || change.recovered() {
		n.enqueue(change.KeySet, event{id: newEventID(), change: change})
	}
}

// enqueue queues ev for key set name, starting its worker if none runs.
func (n *Notifier) enqueue(name string, ev event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		n.logger.Warn("key set event not notified: the handler is stopping",
			zap.String("key_set", name), zap.Int64("generation", ev.generation()))
		return
	}
	queue, running := n.queues[name]
	if len(queue) >= notifyQueueLimit {
		n.logger.Warn("notification queue full; dropped the oldest waiting event",
			zap.String("key_set", name), zap.Int64("dropped_generation", queue[0].generation()))
		queue = append(queue[:0:0], queue[1:]...)
	}
	n.queues[name] = append(queue, ev)
	if !running {
		n.workers.Add(1)
		go n.deliverQueued(name)
	}
}

// GrantDone implements Observer; grants are not notified, stored key sets are.
func (n *Notifier) GrantDone(string, error, time.Duration) {}

// KeystoreFailed implements Observer; failures are not notified.
func (n *Notifier) KeystoreFailed(string) {}

// deliverQueued delivers the changes of key set name, oldest first, until
// none is waiting.
func (n *Notifier) deliverQueued(name string) {
	defer n.workers.Done()
	for {
		n.mu.Lock()
		queue := n.queues[name]
		if len(queue) == 0 || n.ctx.Err() != nil {
			delete(n.queues, name)
			n.mu.Unlock()
			if len(queue) > 0 {
				n.logger.Error("key set changes not notified: the handler stopped",
					zap.String("key_set", name), zap.Int("changes", len(queue)))
			}
			return
		}
		ev := queue[0]
		n.queues[name] = queue[1:]
		n.mu.Unlock()
		n.deliver(name, ev)
	}
}

// deliver POSTs one event of key set name, retrying with a capped
// exponential backoff until the receiver accepts it (2xx), refuses it for
// good (a 4xx other than 408 and 429), or the notifier stops.
func (n *Notifier) deliver(name string, ev event) {
	body := n.notificationOf(ev)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // the provider's exact text, as the keystore keeps it
	if err := enc.Encode(body); err != nil {
		n.logger.Error("encoding key set change notification", zap.String("key_set", name), zap.Error(err))
		return
	}
	fields := []zap.Field{zap.String("key_set", name), zap.Int64("generation", body.Generation),
		zap.String("type", body.Type), zap.String("webhook_id", ev.id)}
	backoff := n.minBackoff
	for attempt := 1; ; attempt++ {
		err := n.post(ev.id, buf.Bytes())
		if err == nil {
			n.logger.Info("notified key set change", append(fields, zap.Int("attempts", attempt))...)
			return
		}
		var refused *refusedError
		if errors.As(err, &refused) {
			n.logger.Error("receiver refused key set change notification; not retrying",
				append(fields, zap.Int("attempts", attempt), zap.Error(err))...)
			return
		}
		n.logger.Warn("key set change notification failed; retrying",
			append(fields, zap.Int("attempt", attempt), zap.Duration("backoff", backoff), zap.Error(err))...)
		if n.wait(n.ctx, backoff) != nil {
			n.logger.Error("key set change not notified: the handler stopped", fields...)
			return
		}
		backoff = min(2*backoff, n.maxBackoff)
	}
}

// notificationOf is the body that announces ev.
func (n *Notifier) notificationOf(ev event) notification {
	if ks := ev.stored; ks != nil {
		body := notification{Type: eventUpdated, Name: ks.Name, Generation: ks.Generation,
			UpdatedAt: ks.UpdatedAt, Expiry: ks.Expiry, RefreshExpiry: ks.RefreshExpiry, Extra: n.extras.ExtrasOf(ks)}
		if n.includeTokens {
			body.Token = ks.Token
		}
		return body
	}
	if w := ev.expiring; w != nil {
		return notification{Type: eventExpiring, Name: w.KeySet, Generation: w.Generation,
			RefreshExpiry: w.RefreshExpiry, At: w.At}
	}
	c := ev.change
	body := notification{Type: eventFailed, Name: c.KeySet, Generation: c.Generation,
		State: c.To, ErrorCode: c.ErrorCode, At: c.At}
	if c.recovered() {
		body.Type = eventRecovered
	}
	return body
}

// sign returns the webhook-signature of body as event id, sent at
// timestamp: the specification's "Signature scheme", HMAC-SHA256 over
// "<id>.<timestamp>.<body>", base64, after the v1 identifier of symmetric
// signatures.
func (n *Notifier) sign(id, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, n.key)
	mac.Write([]byte(id + "." + timestamp + "."))
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// refusedError is a receiver's answer that a retry cannot change.
type refusedError struct{ status int }

func (e *refusedError) Error() string { return fmt.Sprintf("receiver answered %d", e.status) }

// post sends one attempt at delivering event id's body. Every attempt
// carries the same id and the same body bytes, and the time of that
// attempt, signed anew: the specification's "Webhook metadata" says the
// attempt's timestamp "is updated" on every retry while the id stays, and
// retries go on as long as the handler runs, so a first attempt's
// timestamp would soon fall outside every receiver's tolerance. Its errors
// hold no part of the body or of the headers.
func (n *Notifier) post(id string, body []byte) error {
	req, err := http.NewRequestWithContext(n.ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building notification request: %w", err)
	}
	req.Header.Set("User-Agent", "caddy-oauth2-upstream")
	for name, values := range n.header {
		req.Header[name] = slices.Clone(values) // validated: none of the headers set below
	}
	req.Header.Set("Content-Type", "application/json")
	timestamp := strconv.FormatInt(n.now().Unix(), 10)
	req.Header.Set(WebhookIDHeader, id)
	req.Header.Set(WebhookTimestampHeader, timestamp)
	req.Header.Set(WebhookSignatureHeader, n.sign(id, timestamp, body))
	resp, err := n.client.Do(req)
	if err != nil {
		return fmt.Errorf("posting notification: %w", err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, notifyMaxAnswer))
	resp.Body.Close()
	switch status := resp.StatusCode; {
	case status >= 200 && status < 300:
		return nil
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500:
		return fmt.Errorf("receiver answered %d", status)
	default:
		return &refusedError{status: status}
	}
}

// Close stops accepting changes, waits up to drainTime for the pending
// ones to be delivered, then abandons the rest and waits for the workers
// to end.
func (n *Notifier) Close() {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	done := make(chan struct{})
	go func() {
		n.workers.Wait()
		close(done)
	}()
	timer := time.NewTimer(n.drainTime)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		n.logger.Warn("stopping with key set changes not yet notified", zap.Duration("drain_time", n.drainTime))
	}
	n.cancel()
	<-done
	n.client.CloseIdleConnections()
}

// waitFor waits for d, or until ctx ends.
func waitFor(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
