package caddystorage_test

import (
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
