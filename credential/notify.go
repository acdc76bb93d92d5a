package credential

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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

// notification is the body POSTed to the notify URL after each stored
// change. Token is the provider's whole token response, so it holds token
// values by design; it is never logged.
type notification struct {
	Name       string         `json:"name"`
	Generation int64          `json:"generation"`
	Token      keystore.Token `json:"token"`
}

// Notifier POSTs every key set change this process stores to a URL, in
// order per key set, without holding up the refresher: KeySetStored only
// queues. Each key set with changes to deliver has one worker goroutine,
// which exits when its queue is empty, so a later generation never
// overtakes an earlier one.
type Notifier struct {
	url    string
	client *http.Client
	logger *zap.Logger

	minBackoff, maxBackoff time.Duration
	drainTime              time.Duration
	// wait sleeps for a backoff, or returns ctx's error when it ends
	// first; tests replace it.
	wait func(ctx context.Context, d time.Duration) error

	ctx     context.Context // ends when the notifier stops: deliveries are abandoned
	cancel  context.CancelFunc
	workers sync.WaitGroup

	mu sync.Mutex // guards queues and closed
	// queues holds the changes waiting per key set, oldest first. A name
	// is present, even with no change waiting, while its worker runs.
	queues map[string][]*keystore.KeySet
	closed bool
}

// NewNotifier returns a Notifier that POSTs to target, an https URL or
// http to a loopback host (see ValidateNotifyURL).
func NewNotifier(target string, logger *zap.Logger) *Notifier {
	ctx, cancel := context.WithCancel(context.Background())
	transport := http.DefaultTransport.(*http.Transport).Clone()
	return &Notifier{
		url: target,
		client: &http.Client{
			Transport: transport,
			Timeout:   notifyTimeout,
			// A redirect could carry the tokens to another host, or
			// to plain http: a 3xx is a failed delivery.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		logger:     logger,
		minBackoff: notifyMinBackoff,
		maxBackoff: notifyMaxBackoff,
		drainTime:  notifyDrainTime,
		wait:       waitFor,
		ctx:        ctx,
		cancel:     cancel,
		queues:     make(map[string][]*keystore.KeySet),
	}
}

// ValidateNotifyURL accepts an https URL, or http to a loopback host: the
// body carries refresh tokens.
func ValidateNotifyURL(raw string) error {
	return CheckSecretsURL("notify", raw, false, "the notification carries the tokens", "")
}

// KeySetStored queues ks for delivery; it never blocks.
func (n *Notifier) KeySetStored(ks *keystore.KeySet) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		n.logger.Warn("key set change not notified: the handler is stopping",
			zap.String("key_set", ks.Name), zap.Int64("generation", ks.Generation))
		return
	}
	queue, running := n.queues[ks.Name]
	if len(queue) >= notifyQueueLimit {
		n.logger.Warn("notification queue full; dropped the oldest waiting change",
			zap.String("key_set", ks.Name), zap.Int64("dropped_generation", queue[0].Generation))
		queue = append(queue[:0:0], queue[1:]...)
	}
	n.queues[ks.Name] = append(queue, ks)
	if !running {
		n.workers.Add(1)
		go n.deliverQueued(ks.Name)
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
		ks := queue[0]
		n.queues[name] = queue[1:]
		n.mu.Unlock()
		n.deliver(ks)
	}
}

// deliver POSTs one change, retrying with a capped exponential backoff
// until the receiver accepts it (2xx), refuses it for good (a 4xx other
// than 408 and 429), or the notifier stops.
func (n *Notifier) deliver(ks *keystore.KeySet) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // the provider's exact text, as the keystore keeps it
	if err := enc.Encode(notification{Name: ks.Name, Generation: ks.Generation, Token: ks.Token}); err != nil {
		n.logger.Error("encoding key set change notification", zap.String("key_set", ks.Name), zap.Error(err))
		return
	}
	fields := []zap.Field{zap.String("key_set", ks.Name), zap.Int64("generation", ks.Generation)}
	backoff := n.minBackoff
	for attempt := 1; ; attempt++ {
		err := n.post(buf.Bytes())
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

// refusedError is a receiver's answer that a retry cannot change.
type refusedError struct{ status int }

func (e *refusedError) Error() string { return fmt.Sprintf("receiver answered %d", e.status) }

// post sends one notification body. Its errors hold no part of the body.
func (n *Notifier) post(body []byte) error {
	req, err := http.NewRequestWithContext(n.ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building notification request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "caddy-oauth2-upstream")
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
