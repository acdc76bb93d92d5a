// Package keystores is the keystore module family,
// oauth2_upstream.keystores.*: the Caddy modules that configure the
// backends of package keystore (file, redis, caddy_storage) for the
// oauth2_upstream handler's keystore option, in JSON and in the Caddyfile.
package keystores

import (
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

func init() {
	caddy.RegisterModule(FileKeystore{})
}

// FileKeystore is the default keystore: one JSON document per key set in a
// directory, written atomically and durably (temporary file, fsync, rename,
// fsync of the directory), files 0600 in a 0700 directory. Processes sharing
// the directory coordinate through flock(2) lock files beside the documents.
type FileKeystore struct {
	// Path is the directory that holds the documents, created 0700 if
	// missing (and tightened to 0700 if it exists). Default: the
	// "oauth2_upstream" folder in Caddy's data directory.
	Path string `json:"path,omitempty"`

	// Store is the store in Path, opened by Provision.
	*file.Store `json:"-"`
}

// CaddyModule returns the Caddy module information.
func (FileKeystore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oauth2_upstream.keystores.file",
		New: func() caddy.Module { return new(FileKeystore) },
	}
}

// Provision implements caddy.Provisioner: it opens the directory, creating
// it if needed.
func (f *FileKeystore) Provision(caddy.Context) error {
	if f.Path == "" {
		f.Path = filepath.Join(caddy.AppDataDir(), "oauth2_upstream")
	}
	store, err := file.New(f.Path)
	if err != nil {
		return err
	}
	f.Store = store
	return nil
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens. Syntax:
//
//	keystore file [<directory>]
func (f *FileKeystore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the backend name
	if d.NextArg() {
		f.Path = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("keystore file takes no block, got %q", d.Val())
	}
	return nil
}

// Interface guards: the handler asserts keystore.Store on the loaded
// module, and UseCodec for encryption_key.
var (
	_ keystore.Store        = (*FileKeystore)(nil)
	_ keystore.CodecSetter  = (*FileKeystore)(nil)
	_ caddy.Provisioner     = (*FileKeystore)(nil)
	_ caddyfile.Unmarshaler = (*FileKeystore)(nil)
)
