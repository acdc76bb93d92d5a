package keystore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(CaddyStorage{})
}

// caddyStoragePrefix starts every key this store uses in Caddy's storage.
const caddyStoragePrefix = "oauth2_upstream/"

// CaddyStorage keeps key set documents in the storage Caddy is configured
// with (the global "storage" option: the file system by default, or a
// shared backend such as Redis, Consul or S3 that a cluster of Caddy
// instances already uses for certificates). Documents live under
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
type CaddyStorage struct {
	codec   Codec
	storage certmagic.Storage
}

// CaddyModule returns the Caddy module information.
func (CaddyStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oauth2_upstream.keystores.caddy_storage",
		New: func() caddy.Module { return new(CaddyStorage) },
	}
}

// newCaddyStorage returns a store over storage, as Provision makes one over
// Caddy's configured storage.
func newCaddyStorage(storage certmagic.Storage) *CaddyStorage {
	return &CaddyStorage{codec: JSONCodec{}, storage: storage}
}

// Provision implements caddy.Provisioner.
func (s *CaddyStorage) Provision(ctx caddy.Context) error {
	if s.codec == nil {
		s.codec = JSONCodec{}
	}
	s.storage = ctx.Storage()
	if s.storage == nil {
		return errors.New("caddy_storage keystore: Caddy has no storage configured")
	}
	return nil
}

// UseCodec sets how documents are encoded at rest (plain JSON by default).
func (s *CaddyStorage) UseCodec(c Codec) { s.codec = c }

// UnmarshalCaddyfile sets up the store from Caddyfile tokens. Syntax:
//
//	keystore caddy_storage
func (s *CaddyStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the backend name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("keystore caddy_storage takes no block, got %q", d.Val())
	}
	return nil
}

// Key names. The ".json" suffix keeps a document key from ever equalling a
// lock's name, even in a storage that keeps locks beside data.
func documentStorageKey(name string) string { return caddyStoragePrefix + name + ".json" }
func refreshLockName(name string) string    { return caddyStoragePrefix + name + ".lock" }
func writeLockName(name string) string      { return caddyStoragePrefix + name + ".write" }

// Load implements Store.
func (s *CaddyStorage) Load(ctx context.Context, name string) (*KeySet, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	data, err := s.storage.Load(ctx, documentStorageKey(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("loading key set %q from caddy storage: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("loading key set %q from caddy storage: %w", name, err)
	}
	return s.codec.Decode(name, data)
}

// Save implements Store. The generation check and the write happen under
// the key set's write lock, so writers sharing the storage cannot
// interleave; the storage itself must write atomically (certmagic's file
// storage writes a temporary file and renames it).
func (s *CaddyStorage) Save(ctx context.Context, ks *KeySet) (err error) {
	if err := ValidateName(ks.Name); err != nil {
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

	if err := checkFollows(ctx, ks, s.Load); err != nil {
		return err
	}
	if err := s.storage.Store(ctx, documentStorageKey(ks.Name), data); err != nil {
		return fmt.Errorf("saving key set %q to caddy storage: %w", ks.Name, err)
	}
	return nil
}

// Lock implements Store with the storage's lock on the key set's refresh
// lock name.
func (s *CaddyStorage) Lock(ctx context.Context, name string) (func() error, error) {
	if err := ValidateName(name); err != nil {
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

// Interface guards
var (
	_ Store                 = (*CaddyStorage)(nil)
	_ caddy.Provisioner     = (*CaddyStorage)(nil)
	_ caddyfile.Unmarshaler = (*CaddyStorage)(nil)
)
