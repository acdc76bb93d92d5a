// Package file is the keystore that needs no other service: key set
// documents as files in a local directory, shared by the processes that see
// that directory (replicas on one volume) through flock(2) lock files.
package file

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Store is the embedded default keystore: one JSON document per key set in a
// directory, written atomically and durably (temporary file, fsync, rename,
// fsync of the directory), files 0600 in a 0700 directory. Processes sharing
// the directory coordinate through flock(2) lock files beside the documents.
type Store struct {
	dir   string
	codec keystore.Codec
}

// New returns a Store in dir, which it creates 0700 if missing and tightens
// to 0700 if it exists: the documents hold refresh tokens, so nobody else
// may list or read them. Documents are plain JSON until
// UseCodec sets another codec.
func New(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating keystore directory %q: %w", dir, err)
	}
	// MkdirAll leaves an existing directory as it was.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("restricting keystore directory %q to 0700: %w", dir, err)
	}
	return &Store{dir: dir, codec: keystore.JSONCodec{}}, nil
}

// UseCodec sets how documents are encoded at rest (plain JSON by default).
func (f *Store) UseCodec(c keystore.Codec) { f.codec = c }

func (f *Store) docPath(name string) string { return filepath.Join(f.dir, name+".json") }

// Load implements keystore.Store.
func (f *Store) Load(_ context.Context, name string) (*keystore.KeySet, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(f.docPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("loading key set %q from %s: %w", name, f.dir, keystore.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("loading key set %q: %w", name, err)
	}
	return f.codec.Decode(name, data)
}

// Save implements keystore.Store. The generation check and the rename
// happen under an exclusive flock of the key set's write lock file, so
// writers in other processes sharing the directory cannot interleave.
func (f *Store) Save(ctx context.Context, ks *keystore.KeySet) error {
	if err := keystore.ValidateName(ks.Name); err != nil {
		return err
	}
	data, err := f.codec.Encode(ks)
	if err != nil {
		return err
	}
	release, err := lockFile(ctx, f.lockPath(ks.Name, "write"))
	if err != nil {
		return fmt.Errorf("saving key set %q: %w", ks.Name, err)
	}
	defer release()

	if err := keystore.CheckFollows(ctx, ks, f.Load); err != nil {
		return err
	}
	if err := writeFileAtomic(f.docPath(ks.Name), data); err != nil {
		return fmt.Errorf("saving key set %q: %w", ks.Name, err)
	}
	return nil
}

// Lock implements keystore.Store with an exclusive flock(2) on the key set's
// refresh lock file. The kernel releases it when the holder dies, so it
// needs no TTL.
func (f *Store) Lock(ctx context.Context, name string) (func() error, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	release, err := lockFile(ctx, f.lockPath(name, "refresh"))
	if err != nil {
		return nil, fmt.Errorf("locking key set %q: %w", name, err)
	}
	return release, nil
}

// Names implements keystore.Lister: the documents in the directory, that is
// the regular files named <name>.json for a valid name. Lock files and
// temporary files start with a dot, which no valid name does.
func (f *Store) Names(_ context.Context) ([]string, error) {
	entries, err := os.ReadDir(f.dir)
	if err != nil {
		return nil, fmt.Errorf("listing key sets in %q: %w", f.dir, err)
	}
	names := []string{}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() || keystore.ValidateName(name) != nil {
			continue
		}
		names = append(names, name)
	}
	// ReadDir sorts by file name, which is not the order of names when one
	// name is a prefix of another ("a-b.json" sorts before "a.json").
	slices.Sort(names)
	return names, nil
}

// lockPath names a lock file; the leading dot keeps it apart from documents,
// whose names cannot start with one.
func (f *Store) lockPath(name, purpose string) string {
	return filepath.Join(f.dir, "."+name+"."+purpose+".lock")
}

// writeFileAtomic replaces path with data so that a crash at any instant
// leaves either the old or the new file: write a temporary file in the same
// directory, fsync it, rename it over path, fsync the directory.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+strings.TrimSuffix(filepath.Base(path), ".json")+".*.tmp")
	if err != nil {
		return fmt.Errorf("creating temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp makes the file 0600 already; say so for readers of the code.
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("restricting %s: %w", tmp.Name(), err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("renaming into %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// Interface guards
var (
	_ keystore.Store  = (*Store)(nil)
	_ keystore.Lister = (*Store)(nil)
)
