package credential

import (
	"context"
	"fmt"
	"reflect"
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
	n := NewNotifier(rcv.Server.URL, zap.NewNop())
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
	n := NewNotifier(rcv.Server.URL, zap.NewNop())
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
	n := NewNotifier(rcv.Server.URL, zap.NewNop())
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
	n := NewNotifier(rcv.Server.URL, zap.NewNop())
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
	n := NewNotifier(rcv.Server.URL, zap.NewNop())
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
