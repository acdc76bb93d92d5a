package caddystorage_test

import (
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/caddystorage"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/keystoretest"
)

// TestConformance runs the suite over certmagic's file storage, Caddy's
// default. Its locks are polled once a second, hence a slower run.
func TestConformance(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystore.Store {
		return caddystorage.New(&certmagic.FileStorage{Path: t.TempDir()})
	})
}

// TestKeys: documents sit under oauth2_upstream/ in Caddy's storage, beside
// (not among) its certificates.
func TestKeys(t *testing.T) {
	t.Parallel()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	st := caddystorage.New(storage)
	tok := keystore.Token{}
	tok.SetString(keystore.FieldRefreshToken, "rt-seed")
	seed := &keystore.KeySet{Name: "keys", Generation: 1, UpdatedAt: time.Now().UTC(), Token: tok}
	if err := st.Save(t.Context(), seed); err != nil {
		t.Fatalf("Save(%q) = %v; want nil", "keys", err)
	}
	got, err := storage.List(t.Context(), "oauth2_upstream", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "oauth2_upstream/keys.json" {
		t.Errorf("storage.List(%q) = %q; want [oauth2_upstream/keys.json]", "oauth2_upstream", got)
	}
}

// TestNamesSkipsStrays: Names lists the documents directly under
// oauth2_upstream/ only, not locks kept beside them (as storages other than
// the file storage do), nested keys, or keys that name no valid key set.
func TestNamesSkipsStrays(t *testing.T) {
	t.Parallel()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	st := caddystorage.New(storage)
	for _, name := range []string{"b", "a"} {
		tok := keystore.Token{}
		tok.SetString(keystore.FieldRefreshToken, "rt-seed")
		if err := st.Save(t.Context(), &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: time.Now().UTC(), Token: tok}); err != nil {
			t.Fatalf("Save(%q) = %v; want nil", name, err)
		}
	}
	for _, key := range []string{"oauth2_upstream/c.lock", "oauth2_upstream/c.write", "oauth2_upstream/notes.txt",
		"oauth2_upstream/bad name.json", "oauth2_upstream/sub/d.json", "certificates/e.json"} {
		if err := storage.Store(t.Context(), key, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"a", "b"}
	if got, err := st.Names(t.Context()); err != nil || !slices.Equal(got, want) {
		t.Errorf("Names() = %q, %v; want %q, nil", got, err, want)
	}
}
