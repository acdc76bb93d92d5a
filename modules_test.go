package oauth2upstream

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// testShEnv is set by ./test.sh, which tests every module of the repository.
const testShEnv = "OAUTH2UPSTREAM_TEST_SH"

// TestOtherModulesNeedTestSh makes a plain `go test ./...` here say, by failing, that it did not
// run the tests of the repository's other modules (integration_test, k8s, bench): ./... stops
// at a nested go.mod. They are separate modules, and no go.work joins them, so that their
// dependencies stay out of the version selection of a user's build: fosite requires
// dgraph-io/ristretto v1.0.0, which does not compile with the badger/v2 of Caddy's standard
// modules. Under ./test.sh it checks instead that test.sh runs every one of them.
func TestOtherModulesNeedTestSh(t *testing.T) {
	modules := nestedModules(t)
	if os.Getenv(testShEnv) == "" {
		var b strings.Builder
		for _, dir := range modules {
			b.WriteString("\n\t(cd " + dir + " && go test ./...)")
		}
		t.Fatalf("go test ./... in the root does not reach the modules %s: run ./test.sh, which "+
			"tests all of them (and sets %s=1), or each one:%s", strings.Join(modules, ", "), testShEnv, b.String())
	}
	script, err := os.ReadFile("test.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^for dir in ([^;]*);`).FindSubmatch(script)
	if m == nil {
		t.Fatalf("test.sh has no `for dir in ...;` line listing the modules")
	}
	listed := strings.Fields(string(m[1]))
	for _, dir := range modules {
		if !slices.Contains(listed, dir) {
			t.Errorf("test.sh runs the modules %q; it misses %s", listed, dir)
		}
	}
}

// nestedModules returns the directories below the root that hold a go.mod, as ./... would
// otherwise reach them (not testdata, nor names starting with . or _).
func nestedModules(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || path == "." {
			return nil
		}
		if name := d.Name(); name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
			return filepath.SkipDir
		}
		if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
			dirs = append(dirs, filepath.ToSlash(path))
			return filepath.SkipDir
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}
