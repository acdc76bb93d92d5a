package authserver

import (
	"context"
	"crypto/sha256"
	"sync"

	"github.com/ory/fosite"
)

// cachingHasher is fosite's bcrypt hasher that remembers the client secrets
// it already verified. Every token request and every introspection (one per
// resource server request) authenticates a client; bcrypt, even at its
// minimum cost, then dominates a load test under -race, and introspection
// storms time out. A secret is still checked by bcrypt the first time.
type cachingHasher struct {
	fosite.Hasher

	mu       sync.Mutex // guards verified
	verified map[[2][sha256.Size]byte]struct{}
}

func newCachingHasher(h fosite.Hasher) *cachingHasher {
	return &cachingHasher{Hasher: h, verified: map[[2][sha256.Size]byte]struct{}{}}
}

// Compare implements fosite.Hasher.
func (h *cachingHasher) Compare(ctx context.Context, hash, data []byte) error {
	key := [2][sha256.Size]byte{sha256.Sum256(hash), sha256.Sum256(data)}
	h.mu.Lock()
	_, ok := h.verified[key]
	h.mu.Unlock()
	if ok {
		return nil
	}
	if err := h.Hasher.Compare(ctx, hash, data); err != nil {
		return err
	}
	h.mu.Lock()
	h.verified[key] = struct{}{}
	h.mu.Unlock()
	return nil
}
