package keystores

import (
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/caddystorage"
)

func init() {
	caddy.RegisterModule(CaddyStorageKeystore{})
}

// CaddyStorageKeystore keeps key set documents in the storage Caddy is
// configured with (the global "storage" option: the file system by default,
// or a shared backend such as Redis, Consul or S3 that a cluster of Caddy
// instances already uses for certificates). Documents live under
// oauth2_upstream/<name>.json.
//
// Coordination uses the storage's own locks, built for certificate renewals:
// they may go stale (the file storage's after a few seconds without its
// holder's heartbeat) and are polled (each second, for the file storage).
// The generation check still fences a holder whose lock went stale, but a
// storage whose writes are not atomic or whose locks do not exclude can lose
// a rotated refresh token; prefer the file or redis keystore where they fit.
type CaddyStorageKeystore struct {
	// Store is the store over Caddy's storage, made by Provision.
	*caddystorage.Store `json:"-"`
}

// CaddyModule returns the Caddy module information.
func (CaddyStorageKeystore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oauth2_upstream.keystores.caddy_storage",
		New: func() caddy.Module { return new(CaddyStorageKeystore) },
	}
}

// Provision implements caddy.Provisioner: it takes the storage of ctx, the
// one Caddy is configured with.
func (s *CaddyStorageKeystore) Provision(ctx caddy.Context) error {
	storage := ctx.Storage()
	if storage == nil {
		return errors.New("caddy_storage keystore: Caddy has no storage configured")
	}
	s.Store = caddystorage.New(storage)
	return nil
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens. Syntax:
//
//	keystore caddy_storage
func (s *CaddyStorageKeystore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the backend name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("keystore caddy_storage takes no block, got %q", d.Val())
	}
	return nil
}

// Interface guards: the handler asserts keystore.Store on the loaded
// module, and UseCodec for encryption_key.
var (
	_ keystore.Store        = (*CaddyStorageKeystore)(nil)
	_ keystore.CodecSetter  = (*CaddyStorageKeystore)(nil)
	_ caddy.Provisioner     = (*CaddyStorageKeystore)(nil)
	_ caddyfile.Unmarshaler = (*CaddyStorageKeystore)(nil)
)
