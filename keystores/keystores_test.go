package keystores

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/keystoretest"
)

// keystoreSeed is a valid first generation of the key set name.
func keystoreSeed(name string) *keystore.KeySet {
	tok := keystore.Token{}
	tok.SetString(keystore.FieldRefreshToken, "rt-seed")
	return &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: time.Now().UTC(), Token: tok}
}

// TestFileKeystoreProvision: without a path the documents go to the
// "oauth2_upstream" folder of Caddy's data directory, made 0700, and the
// store made by Provision never shows up in the JSON configuration.
func TestFileKeystoreProvision(t *testing.T) {
	dataHome := t.TempDir()
	t.Setenv("XDG_DATA_HOME", dataHome)
	var f FileKeystore
	if err := f.Provision(caddy.Context{}); err != nil {
		t.Fatalf("Provision() = %v; want nil", err)
	}
	want := filepath.Join(dataHome, "caddy", "oauth2_upstream")
	if f.Path != want {
		t.Errorf("after Provision() Path = %q; want %q", f.Path, want)
	}
	if fi, err := os.Stat(want); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("Stat(%q) = %v, %v; want a 0700 directory", want, fi, err)
	}
	if err := f.Save(t.Context(), keystoreSeed("provisioned")); err != nil {
		t.Fatalf("Save(%q) = %v; want nil", "provisioned", err)
	}
	if _, err := os.Stat(filepath.Join(want, "provisioned.json")); err != nil {
		t.Errorf("Save(%q) wrote no document in %s: %v", "provisioned", want, err)
	}
	got, err := json.Marshal(&f)
	wantJSON, _ := json.Marshal(map[string]string{"path": want})
	if err != nil || string(got) != string(wantJSON) {
		t.Errorf("json.Marshal(provisioned FileKeystore) = %s, %v; want %s", got, err, wantJSON)
	}
}

func TestFileKeystoreUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name     string
		input    string
		wantPath string
		wantErr  string
	}{
		{name: "bare", input: "file"},
		{name: "directory", input: "file /var/lib/oauth2-upstream", wantPath: "/var/lib/oauth2-upstream"},
		{name: "two directories", input: "file /a /b", wantErr: "wrong argument count"},
		{name: "block", input: "file /a {\n mode 0700\n}", wantErr: "takes no block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f FileKeystore
			err := f.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", tt.input, err, tt.wantErr)
				}
				return
			}
			if err != nil || f.Path != tt.wantPath {
				t.Errorf("UnmarshalCaddyfile(%q) = %v, Path %q; want nil, Path %q", tt.input, err, f.Path, tt.wantPath)
			}
		})
	}
}

// TestCaddyStorageKeystoreProvision: the documents go to the storage Caddy
// is configured with, under oauth2_upstream/.
func TestCaddyStorageKeystoreProvision(t *testing.T) {
	root := t.TempDir()
	storage, _ := json.Marshal(map[string]string{"module": "file_system", "root": root})
	ctx, err := caddy.ProvisionContext(&caddy.Config{StorageRaw: storage})
	if err != nil {
		t.Fatalf("ProvisionContext() = %v", err)
	}
	var s CaddyStorageKeystore
	if err := s.Provision(ctx); err != nil {
		t.Fatalf("Provision() = %v; want nil", err)
	}
	if err := s.Save(t.Context(), keystoreSeed("in-storage")); err != nil {
		t.Fatalf("Save(%q) = %v; want nil", "in-storage", err)
	}
	if _, err := os.Stat(filepath.Join(root, "oauth2_upstream", "in-storage.json")); err != nil {
		t.Errorf("Save(%q) wrote no document in Caddy's storage %s: %v", "in-storage", root, err)
	}
}

func TestCaddyStorageKeystoreUnmarshalCaddyfile(t *testing.T) {
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
			var s CaddyStorageKeystore
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

// TestRedisKeystorePlaceholders: addresses and credentials come from
// placeholders ({env.*}) at Provision, and the configuration keeps the
// placeholders, so Caddy's admin API never serves the password.
func TestRedisKeystorePlaceholders(t *testing.T) {
	server := keystoretest.StartRedis(t, "--requirepass", "s3cret-pw")
	t.Setenv("KEYSTORE_TEST_REDIS_ADDRESS", server.Addr())
	t.Setenv("KEYSTORE_TEST_REDIS_PASSWORD", "s3cret-pw")
	r := &RedisKeystore{
		Addresses: []string{"{env.KEYSTORE_TEST_REDIS_ADDRESS}"},
		Password:  "{env.KEYSTORE_TEST_REDIS_PASSWORD}",
	}
	if err := r.Provision(caddy.Context{}); err != nil {
		t.Fatalf("Provision() = %v; want nil", err)
	}
	defer r.Cleanup()
	if err := r.Save(t.Context(), keystoreSeed("placeholders")); err != nil {
		t.Fatalf("Save(%q) with credentials from placeholders = %v; want nil", "placeholders", err)
	}
	if r.Password != "{env.KEYSTORE_TEST_REDIS_PASSWORD}" || r.Addresses[0] != "{env.KEYSTORE_TEST_REDIS_ADDRESS}" {
		t.Errorf("after Provision, config holds Password %q, Addresses %q; want the placeholders kept", r.Password, r.Addresses)
	}
	if got, err := json.Marshal(r); err != nil || strings.Contains(string(got), "s3cret-pw") {
		t.Errorf("json.Marshal(provisioned RedisKeystore) = %s, %v; want no password", got, err)
	}
}

// TestRedisKeystoreProvision covers defaults and refused configurations.
func TestRedisKeystoreProvision(t *testing.T) {
	tests := []struct {
		name    string
		config  RedisKeystore
		want    RedisKeystore // checked fields: KeyPrefix and the durations
		wantErr string
	}{
		{
			name:   "defaults",
			config: RedisKeystore{},
			want: RedisKeystore{KeyPrefix: "oauth2_upstream:", LockTTL: caddy.Duration(30 * time.Second),
				LockWait: caddy.Duration(10 * time.Second), DialTimeout: caddy.Duration(5 * time.Second), ReadTimeout: caddy.Duration(3 * time.Second)},
		},
		{
			name:   "set values kept",
			config: RedisKeystore{KeyPrefix: "p:", LockTTL: caddy.Duration(time.Minute), LockWait: caddy.Duration(time.Second), DialTimeout: 1, ReadTimeout: 2},
			want:   RedisKeystore{KeyPrefix: "p:", LockTTL: caddy.Duration(time.Minute), LockWait: caddy.Duration(time.Second), DialTimeout: 1, ReadTimeout: 2},
		},
		{name: "negative ttl", config: RedisKeystore{LockTTL: -1}, wantErr: "negative"},
		{name: "negative db", config: RedisKeystore{DB: -1}, wantErr: "db"},
		{name: "db on a cluster", config: RedisKeystore{Addresses: []string{"a:1", "b:2"}, DB: 2}, wantErr: "Cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.config
			err := r.Provision(caddy.Context{})
			defer r.Cleanup()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Provision() = %v; want an error mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Provision() = %v; want nil", err)
			}
			got := [5]any{r.KeyPrefix, r.LockTTL, r.LockWait, r.DialTimeout, r.ReadTimeout}
			want := [5]any{tt.want.KeyPrefix, tt.want.LockTTL, tt.want.LockWait, tt.want.DialTimeout, tt.want.ReadTimeout}
			if got != want {
				t.Errorf("after Provision() key_prefix, lock_ttl, lock_wait, dial_timeout, read_timeout = %v; want %v", got, want)
			}
		})
	}
}

func TestRedisKeystoreUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    RedisKeystore
		wantErr string
	}{
		{
			name:  "shorthand address",
			input: `redis 127.0.0.1:6379`,
			want:  RedisKeystore{Addresses: []string{"127.0.0.1:6379"}},
		},
		{
			name:  "bare",
			input: `redis`,
			want:  RedisKeystore{},
		},
		{
			name: "full block",
			input: `redis {
				address   10.0.0.1:6379 10.0.0.2:6379
				address   10.0.0.3:6379
				username  proxy
				password  {env.REDIS_PASSWORD}
				db        3
				key_prefix tenant1:
				master_name mymaster
				tls       redis.internal
				lock_ttl  45s
				lock_wait 5s
				dial_timeout 2s
				read_timeout 1s
			}`,
			want: RedisKeystore{
				Addresses: []string{"10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"},
				Username:  "proxy", Password: "{env.REDIS_PASSWORD}", DB: 3, KeyPrefix: "tenant1:",
				MasterName: "mymaster", TLS: true, TLSServerName: "redis.internal",
				LockTTL: caddy.Duration(45 * time.Second), LockWait: caddy.Duration(5 * time.Second),
				DialTimeout: caddy.Duration(2 * time.Second), ReadTimeout: caddy.Duration(time.Second),
			},
		},
		{
			name:  "tls without server name",
			input: "redis redis:6380 {\n tls\n}",
			want:  RedisKeystore{Addresses: []string{"redis:6380"}, TLS: true},
		},
		{name: "unknown option", input: "redis {\n passwd x\n}", wantErr: `unrecognized keystore redis option "passwd"`},
		{name: "password without value", input: "redis {\n password\n}", wantErr: "wrong argument count"},
		{name: "two passwords", input: "redis {\n password a b\n}", wantErr: "wrong argument count"},
		{name: "address without value", input: "redis {\n address\n}", wantErr: "wrong argument count"},
		{name: "bad db", input: "redis {\n db one\n}", wantErr: "db must be a database number"},
		{name: "bad duration", input: "redis {\n lock_ttl soon\n}", wantErr: `lock_ttl: "soon" is not a duration`},
		{name: "zero duration", input: "redis {\n lock_wait 0s\n}", wantErr: "lock_wait must be a positive duration"},
		{name: "tls two args", input: "redis {\n tls a b\n}", wantErr: "wrong argument count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got RedisKeystore
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", tt.input, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("UnmarshalCaddyfile(%q) = %v; want nil", tt.input, err)
			}
			gotJSON, _ := json.Marshal(&got)
			wantJSON, _ := json.Marshal(&tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("UnmarshalCaddyfile(%q) = %s; want %s", tt.input, gotJSON, wantJSON)
			}
		})
	}
}
