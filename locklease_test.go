package oauth2upstream

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystores"
)

// TestRedisKeystoreLockLease: a Redis lock_ttl that, unrenewed, could
// expire during one token request is refused with an error naming lock_ttl
// and token_timeout; the defaults pass, and keystores whose locks never
// expire are not checked.
func TestRedisKeystoreLockLease(t *testing.T) {
	var defaults keystores.RedisKeystore
	if err := defaults.Provision(caddy.Context{}); err != nil {
		t.Fatalf("Provision() = %v; want nil", err)
	}
	defer defaults.Cleanup()
	tests := []struct {
		name         string
		store        keystore.Store
		tokenTimeout time.Duration
		wantErr      bool
	}{
		{"defaults", &defaults, 10 * time.Second, false},
		{"exactly token_timeout plus the margin", &keystores.RedisKeystore{LockTTL: caddy.Duration(15 * time.Second)}, 10 * time.Second, false},
		{"just under", &keystores.RedisKeystore{LockTTL: caddy.Duration(15*time.Second - time.Millisecond)}, 10 * time.Second, true},
		{"default lock_ttl, long token_timeout", &defaults, 30 * time.Second, true},
		{"file keystore", &keystores.FileKeystore{}, time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkLockLease(tt.store, tt.tokenTimeout)
			if !tt.wantErr {
				if err != nil {
					t.Errorf("checkLockLease(token_timeout %v) = %v; want nil", tt.tokenTimeout, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "lock_ttl") || !strings.Contains(err.Error(), "token_timeout") {
				t.Errorf("checkLockLease(token_timeout %v) = %v; want an error naming lock_ttl and token_timeout", tt.tokenTimeout, err)
			}
		})
	}
}
