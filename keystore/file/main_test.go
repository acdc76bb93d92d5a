package file_test

import (
	"os"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/leakcheck"
)

// TestMain checks, after the whole suite, that no goroutine of this package
// (a Lock still polling a held flock) outlived its test.
func TestMain(m *testing.M) {
	os.Exit(leakcheck.Main(m, "github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file.", nil))
}
