package keystore_test

import (
	"errors"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// FuzzDecodeKeySet: decoding any stored bytes either fails with ErrCorrupt or
// ErrInvalidName, or gives a valid key set that encodes and decodes to the
// same document. Seeds live in testdata/fuzz/FuzzDecodeKeySet.
func FuzzDecodeKeySet(f *testing.F) {
	f.Add("sf", []byte(`{"name":"sf","generation":1,"updated_at":"2026-11-27T08:00:00Z","token":{"refresh_token":"rt"}}`))
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		codec := keystore.JSONCodec{}
		ks, err := codec.Decode(name, data)
		if err != nil {
			if !errors.Is(err, keystore.ErrCorrupt) && !errors.Is(err, keystore.ErrInvalidName) {
				t.Fatalf("Decode(%q) = %v; want ErrCorrupt or ErrInvalidName", name, err)
			}
			return
		}
		if err := ks.Validate(name); err != nil {
			t.Fatalf("Decode(%q) accepted a document that does not validate: %v", name, err)
		}
		again, err := codec.Encode(ks)
		if err != nil {
			t.Fatalf("Encode(decoded) = %v", err)
		}
		back, err := codec.Decode(name, again)
		if err != nil {
			t.Fatalf("Decode(Encode(decoded)) = %v", err)
		}
		if back.Generation != ks.Generation || back.Token.RefreshToken() != ks.Token.RefreshToken() || back.Token.AccessToken() != ks.Token.AccessToken() {
			t.Fatalf("round trip changed the key set: %+v != %+v", back, ks)
		}
	})
}
