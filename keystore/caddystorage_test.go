package keystore_test

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/keystoretest"
)

// TestCaddyStorageConformance runs the suite over certmagic's file storage,
// Caddy's default. Its locks are polled once a second, hence a slower run.
func TestCaddyStorageConformance(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystore.Store {
		return keystore.NewCaddyStorage(&certmagic.FileStorage{Path: t.TempDir()})
	})
}

// TestCaddyStorageKeys: documents sit under oauth2_upstream/ in Caddy's
// storage, beside (not among) its certificates.
func TestCaddyStorageKeys(t *testing.T) {
	t.Parallel()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	st := keystore.NewCaddyStorage(storage)
	if err := st.Save(t.Context(), seedKeySet("keys")); err != nil {
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

func TestCaddyStorageUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		wantErr string
	}{
		{name: "bare", input: "caddy_storage"},
		{name: "argument", input: "caddy_storage /var/lib", wantErr: "wrong argument count"},
		{name: "block", input: "caddy_storage {\n prefix x\n}", wantErr: "takes no block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s keystore.CaddyStorage
			err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr == "" && err != nil {
				t.Errorf("UnmarshalCaddyfile(%q) = %v; want nil", tt.input, err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", tt.input, err, tt.wantErr)
			}
		})
	}
}
