package discovery

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/discovery/discoverytest"
)

// Reads of one issuer within TTL, concurrent ones included, make one
// request; one after it makes another.
func TestCacheKeepsMetadataForTTL(t *testing.T) {
	t.Parallel()
	as := discoverytest.NewServer(t, map[string]any{"token_endpoint": "https://as.example.com/token"})
	clock := credentialtest.NewClock()
	cache := NewCache(clock.Now)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := cache.Get(t.Context(), as.Issuer(), time.Minute); err != nil {
				t.Errorf("Get(%q) = %v", as.Issuer(), err)
			}
		})
	}
	wg.Wait()
	clock.Advance(TTL - time.Second)
	md, err := cache.Get(t.Context(), as.Issuer(), time.Minute)
	if err != nil || md.TokenEndpoint != "https://as.example.com/token" {
		t.Fatalf("Get(%q) = %+v, %v; want its token endpoint", as.Issuer(), md, err)
	}
	if n := as.Requests(); n != 1 {
		t.Errorf("five reads within TTL made %d requests; want 1", n)
	}
	clock.Advance(time.Second)
	if _, err := cache.Get(t.Context(), as.Issuer(), time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := as.Requests(); n != 2 {
		t.Errorf("a read after TTL: %d requests in all; want 2", n)
	}
}

// A failure is kept for FailureTTL, so the handlers of one config share
// it, and read again after it.
func TestCacheKeepsFailureBriefly(t *testing.T) {
	t.Parallel()
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	clock := credentialtest.NewClock()
	cache := NewCache(clock.Now)
	for range 2 {
		if _, err := cache.Get(t.Context(), srv.URL, time.Minute); !errors.Is(err, ErrUnreachable) {
			t.Fatalf("Get(%q) = %v; want ErrUnreachable", srv.URL, err)
		}
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("two reads of a failing issuer made %d requests; want 1", n)
	}
	clock.Advance(FailureTTL)
	cache.Get(t.Context(), srv.URL, time.Minute)
	if n := requests.Load(); n != 2 {
		t.Errorf("a read after FailureTTL: %d requests in all; want 2", n)
	}
}

// A read is bounded by its timeout: an issuer that never answers fails it
// as unreachable, saying so.
func TestCacheReadTimesOut(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: the handler returns, Close can end
	cache := NewCache(time.Now)
	_, err := cache.Get(t.Context(), srv.URL, 50*time.Millisecond)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "no answer within 50ms") {
		t.Errorf("Get(%q) of a server that never answers = %v; want ErrUnreachable, no answer within 50ms", srv.URL, err)
	}
}

// A read cut short by its caller's context says nothing of the issuer: the
// next read tries again.
func TestCacheForgetsCancelledRead(t *testing.T) {
	t.Parallel()
	as := discoverytest.NewServer(t, nil)
	cache := NewCache(time.Now)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := cache.Get(ctx, as.Issuer(), time.Minute); err == nil {
		t.Fatalf("Get(%q) with a cancelled context = nil error; want one", as.Issuer())
	}
	if md, err := cache.Get(t.Context(), as.Issuer(), time.Minute); err != nil || md.Issuer != as.Issuer() {
		t.Errorf("Get(%q) after a cancelled read = %+v, %v; want its metadata", as.Issuer(), md, err)
	}
}
