package discovery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

const (
	// TTL is how long metadata once read serves: the handlers of one
	// config, provisioned one after another, and a reload within it read
	// an issuer's metadata once. A reload after it reads it again, so a
	// server that moved its endpoints is followed by the next reload.
	TTL = 5 * time.Minute
	// FailureTTL is how long a failed read is kept: long enough that the
	// handlers of one config share one failure instead of each waiting out
	// its timeout, short enough that a reload once the issuer is back reads
	// it again.
	FailureTTL = 10 * time.Second
)

// Cache keeps the metadata read of each issuer, for TTL, and a failure to
// read it, for FailureTTL; concurrent reads of one issuer share one fetch.
// It holds one entry per issuer ever read, a few KiB each. Safe for
// concurrent use.
type Cache struct {
	now    func() time.Time
	client *http.Client

	mu      sync.Mutex // guards entries
	entries map[string]*cacheEntry
}

// cacheEntry is one issuer's read, done or in flight.
type cacheEntry struct {
	done chan struct{} // closed once the fields below are set
	md   *Metadata
	err  error
	at   time.Time // when the read ended; set under Cache.mu
}

// NewCache returns an empty cache reading the clock now, whose reads follow
// no redirects (NewClient).
func NewCache(now func() time.Time) *Cache {
	return &Cache{now: now, client: NewClient(), entries: make(map[string]*cacheEntry)}
}

// Get returns the metadata of issuer (Fetch): kept, or read now within
// timeout, both well-known locations included. Callers that ask while a
// read is under way wait for it, each at most until its ctx ends; the read
// is bounded by the timeout of the caller that started it. The Metadata is
// shared: read-only.
func (c *Cache) Get(ctx context.Context, issuer string, timeout time.Duration) (*Metadata, error) {
	c.mu.Lock()
	e := c.entries[issuer]
	fresh := e != nil && !c.expiredLocked(e)
	if !fresh {
		e = &cacheEntry{done: make(chan struct{})}
		c.entries[issuer] = e
	}
	c.mu.Unlock()
	if !fresh {
		c.read(ctx, issuer, timeout, e)
	}
	select {
	case <-e.done:
		return e.md, e.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the metadata: %w", ctx.Err())
	}
}

// expiredLocked reports whether e is done and older than it may be kept.
// c.mu must be held.
func (c *Cache) expiredLocked(e *cacheEntry) bool {
	select {
	case <-e.done:
	default:
		return false // in flight
	}
	ttl := TTL
	if e.err != nil {
		ttl = FailureTTL
	}
	return c.now().Sub(e.at) >= ttl
}

// read fetches issuer's metadata into e. A read cut short because ctx
// ended says nothing of the issuer: it is not kept.
func (c *Cache) read(ctx context.Context, issuer string, timeout time.Duration, e *cacheEntry) {
	readCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	md, err := Fetch(readCtx, c.client, issuer)
	if err != nil && errors.Is(readCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("%w (no answer within %v)", err, timeout)
	}
	c.mu.Lock()
	e.md, e.err, e.at = md, err, c.now()
	if ctx.Err() != nil && c.entries[issuer] == e {
		delete(c.entries, issuer)
	}
	c.mu.Unlock()
	close(e.done)
}
