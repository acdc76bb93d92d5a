// Package caddystorage keeps key set documents in a certmagic.Storage: in
// Caddy, the storage configured with the global "storage" option (the file
// system by default, or a shared backend such as Redis, Consul or S3 that a
// cluster of Caddy instances already uses for certificates).
package caddystorage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"

	"github.com/caddyserver/certmagic"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// keyPrefix starts every key this store uses in the storage.
const keyPrefix = "oauth2_upstream/"

// Store is a keystore.Store over a certmagic.Storage. Documents live under
// oauth2_upstream/<name>.json.
//
// Coordination uses the storage's own locks: oauth2_upstream/<name>.lock is
// the refresh lock, and Save holds oauth2_upstream/<name>.write while it
// compares the stored generation and writes. Their strength is the
// storage's: certmagic's locks are built for certificate renewals, may go
// stale (the file storage's after a few seconds without its holder's
// heartbeat), and are polled (each second, for the file storage). The
// generation check still fences a holder whose lock went stale, but a
// storage whose writes are not atomic or whose locks do not exclude can lose
// a rotated refresh token; prefer the file or redis keystore where they fit.
type Store struct {
	codec   keystore.Codec
	storage certmagic.Storage
}

// New returns a store over storage. Documents are plain JSON until UseCodec
// sets another codec.
func New(storage certmagic.Storage) *Store {
	return &Store{codec: keystore.JSONCodec{}, storage: storage}
}

// UseCodec sets how documents are encoded at rest (plain JSON by default).
func (s *Store) UseCodec(c keystore.Codec) { s.codec = c }

// Key names. The ".json" suffix keeps a document key from ever equalling a
// lock's name, even in a storage that keeps locks beside data.
func documentStorageKey(name string) string { return keyPrefix + name + ".json" }
func refreshLockName(name string) string    { return keyPrefix + name + ".lock" }
func writeLockName(name string) string      { return keyPrefix + name + ".write" }

// Load implements keystore.Store.
func (s *Store) Load(ctx context.Context, name string) (*keystore.KeySet, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	data, err := s.storage.Load(ctx, documentStorageKey(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("loading key set %q from caddy storage: %w", name, keystore.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("loading key set %q from caddy storage: %w", name, err)
	}
	return s.codec.Decode(name, data)
}

// Save implements keystore.Store. The generation check and the write happen
// under the key set's write lock, so writers sharing the storage cannot
// interleave; the storage itself must write atomically (certmagic's file
// storage writes a temporary file and renames it).
func (s *Store) Save(ctx context.Context, ks *keystore.KeySet) (err error) {
	if err := keystore.ValidateName(ks.Name); err != nil {
		return err
	}
	data, err := s.codec.Encode(ks)
	if err != nil {
		return err
	}
	lock := writeLockName(ks.Name)
	if err := s.storage.Lock(ctx, lock); err != nil {
		return fmt.Errorf("saving key set %q: taking the write lock: %w", ks.Name, err)
	}
	defer func() {
		if unlockErr := s.storage.Unlock(context.WithoutCancel(ctx), lock); unlockErr != nil && err == nil {
			err = fmt.Errorf("saving key set %q: releasing the write lock: %w", ks.Name, unlockErr)
		}
	}()

	if err := keystore.CheckFollows(ctx, ks, s.Load); err != nil {
		return err
	}
	if err := s.storage.Store(ctx, documentStorageKey(ks.Name), data); err != nil {
		return fmt.Errorf("saving key set %q to caddy storage: %w", ks.Name, err)
	}
	return nil
}

// Lock implements keystore.Store with the storage's lock on the key set's
// refresh lock name.
func (s *Store) Lock(ctx context.Context, name string) (func() error, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	lock := refreshLockName(name)
	if err := s.storage.Lock(ctx, lock); err != nil {
		return nil, fmt.Errorf("locking key set %q in caddy storage: %w", name, err)
	}
	// A second call must not release a lock that another holder has
	// taken since the first.
	var (
		once sync.Once
		err  error
	)
	return func() error {
		once.Do(func() {
			if unlockErr := s.storage.Unlock(context.WithoutCancel(ctx), lock); unlockErr != nil {
				err = fmt.Errorf("releasing the refresh lock of key set %q: %w", name, unlockErr)
			}
		})
		return err
	}, nil
}

// Names implements keystore.Lister with the storage's List of the keys
// directly under oauth2_upstream/: the documents, <name>.json for a valid
// name. Locks kept beside the data (.lock, .write) and anything else there
// are skipped; no oauth2_upstream/ at all is an empty store.
func (s *Store) Names(ctx context.Context) ([]string, error) {
	keys, err := s.storage.List(ctx, strings.TrimSuffix(keyPrefix, "/"), false)
	if errors.Is(err, fs.ErrNotExist) {
		return []string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing key sets in caddy storage: %w", err)
	}
	names := []string{}
	for _, key := range keys {
		rest, ok := strings.CutPrefix(key, keyPrefix)
		if !ok {
			continue
		}
		name, ok := strings.CutSuffix(rest, ".json")
		if !ok || keystore.ValidateName(name) != nil {
			continue
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// Interface guards
var (
	_ keystore.Store  = (*Store)(nil)
	_ keystore.Lister = (*Store)(nil)
)
