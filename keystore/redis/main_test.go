package redis_test

import (
	"os"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/leakcheck"
)

// TestMain checks, after the whole suite, that no goroutine of this package
// (a lock's renewal) outlived its test.
func TestMain(m *testing.M) {
	os.Exit(leakcheck.Main(m, "github.com/oauth2upstream/caddy-oauth2-upstream/keystore/redis.", nil))
}
