package keystore_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/keystoretest"
)

func testKey(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }

func newEncryptedFile(t *testing.T, dir string, keys ...string) *file.Store {
	t.Helper()
	codec, err := keystore.NewEncryptingCodec(keys...)
	if err != nil {
		t.Fatalf("NewEncryptingCodec() = %v", err)
	}
	f, err := file.New(dir)
	if err != nil {
		t.Fatalf("file.New(%q) = %v; want nil", dir, err)
	}
	f.UseCodec(codec)
	return f
}

// The encrypted file keystore passes the same conformance suite.
func TestEncryptedFileConformance(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystore.Store {
		return newEncryptedFile(t, t.TempDir(), testKey(1))
	})
}

// A stored document holds no token in clear, and reads back verbatim.
func TestEncryptionRoundTrip(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := newEncryptedFile(t, dir, testKey(1))
	ks := keystoretest.Seed("sf")
	ks.Token.SetString("instance_url", "https://eu12.my.salesforce.com")
	if err := f.Save(context.Background(), ks); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "sf.json"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("rt-seed")) || bytes.Contains(raw, []byte("salesforce.com")) {
		t.Errorf("encrypted document shows token fields in clear: %s", raw)
	}
	got, err := f.Load(context.Background(), "sf")
	if err != nil {
		t.Fatalf("Load() = %v", err)
	}
	if d := keystoretest.Diff(got, ks); d != "" {
		t.Errorf("Load() differs from what was saved: %s", d)
	}
}

// Every way a document can fail to decrypt is ErrCorrupt naming the key set.
func TestEncryptionRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mangle func(t *testing.T, dir string)
		keys   []string
	}{
		{name: "wrong key", keys: []string{testKey(2)}},
		{name: "tampered ciphertext", keys: []string{testKey(1)}, mangle: func(t *testing.T, dir string) {
			editEnvelope(t, filepath.Join(dir, "sf.json"), func(env map[string]any) {
				ct, _ := base64.StdEncoding.DecodeString(env["ciphertext"].(string))
				ct[len(ct)/2] ^= 1
				env["ciphertext"] = base64.StdEncoding.EncodeToString(ct)
			})
		}},
		{name: "generation changed in clear", keys: []string{testKey(1)}, mangle: func(t *testing.T, dir string) {
			editEnvelope(t, filepath.Join(dir, "sf.json"), func(env map[string]any) { env["generation"] = 9 })
		}},
		{name: "document copied to another name", keys: []string{testKey(1)}, mangle: func(t *testing.T, dir string) {
			data, _ := os.ReadFile(filepath.Join(dir, "other.json"))
			if err := os.WriteFile(filepath.Join(dir, "sf.json"), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "stored unencrypted", keys: []string{testKey(1)}, mangle: func(t *testing.T, dir string) {
			data, _ := keystore.JSONCodec{}.Encode(keystoretest.Seed("sf"))
			if err := os.WriteFile(filepath.Join(dir, "sf.json"), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writer := newEncryptedFile(t, dir, testKey(1))
			for _, name := range []string{"sf", "other"} {
				if err := writer.Save(context.Background(), keystoretest.Seed(name)); err != nil {
					t.Fatal(err)
				}
			}
			if tt.mangle != nil {
				tt.mangle(t, dir)
			}
			_, err := newEncryptedFile(t, dir, tt.keys...).Load(context.Background(), "sf")
			if !errors.Is(err, keystore.ErrCorrupt) || !strings.Contains(err.Error(), `"sf"`) {
				t.Errorf("Load(%q) = %v; want ErrCorrupt naming the key set", "sf", err)
			}
			if err != nil && strings.Contains(err.Error(), "rt-seed") {
				t.Errorf("error holds a token value: %v", err)
			}
		})
	}
}

// Keys rotate: with the new key first and the old one kept, old documents
// still decrypt, and new writes use the new key only.
func TestEncryptionKeyRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old := newEncryptedFile(t, dir, testKey(1))
	if err := old.Save(context.Background(), keystoretest.Seed("sf")); err != nil {
		t.Fatal(err)
	}
	rotated := newEncryptedFile(t, dir, testKey(2), testKey(1))
	ks, err := rotated.Load(context.Background(), "sf")
	if err != nil {
		t.Fatalf("Load() with the old key second = %v", err)
	}
	next := ks.Next(ks.Token, ks.Expiry, ks.UpdatedAt)
	if err := rotated.Save(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	if _, err := newEncryptedFile(t, dir, testKey(2)).Load(context.Background(), "sf"); err != nil {
		t.Errorf("Load() with only the new key after a rewrite = %v; want nil", err)
	}
	if _, err := newEncryptedFile(t, dir, testKey(1)).Load(context.Background(), "sf"); !errors.Is(err, keystore.ErrCorrupt) {
		t.Errorf("Load() with only the old key after a rewrite = %v; want ErrCorrupt", err)
	}
}

// Bad keys are refused with a message that never shows the key.
func TestEncryptionBadKeys(t *testing.T) {
	t.Parallel()
	short := base64.StdEncoding.EncodeToString([]byte("sixteen byte key"))
	for _, key := range []string{"", "not base64 !!", short} {
		_, err := keystore.NewEncryptingCodec(key)
		if err == nil {
			t.Errorf("NewEncryptingCodec(%q) = nil; want an error", key)
			continue
		}
		if key != "" && strings.Contains(err.Error(), key) {
			t.Errorf("error shows the key: %v", err)
		}
	}
	if _, err := keystore.NewEncryptingCodec(); err == nil {
		t.Error("NewEncryptingCodec() with no key = nil; want an error")
	}
}

func editEnvelope(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var env map[string]any
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	edit(env)
	data, _ = json.Marshal(env)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
