// Package leakcheck is the check that the repository's test suites run after
// they pass: no goroutine of the package under test outlived its test, and
// whatever else a suite asks for (no open temporary file, say) holds.
package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// patience is how long goroutines get to wind down after the last test.
const patience = 10 * time.Second

// Main runs the tests of m and, when they pass, checks that no goroutine
// runs a function whose qualified name starts with prefix (for example
// "github.com/oauth2upstream/caddy-oauth2-upstream/credential.") and that
// extra, when not nil, reports nothing. It returns the exit code, for
// os.Exit in TestMain.
func Main(m *testing.M, prefix string, extra func() error) int {
	code := m.Run()
	if code != 0 {
		return code
	}
	deadline := time.Now().Add(patience)
	for {
		err := find(prefix, extra)
		if err == nil {
			return 0
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "leak check:", err)
			return 1
		}
		time.Sleep(50 * time.Millisecond) // goroutines wind down on their own; nothing to wait on
	}
}

func find(prefix string, extra func() error) error {
	if extra != nil {
		if err := extra(); err != nil {
			return err
		}
	}
	var leaked []string
	for _, g := range Stacks() {
		// The goroutine running this check runs TestMain too.
		if strings.Contains(g, prefix) && !strings.Contains(g, "internal/leakcheck.") {
			leaked = append(leaked, g)
		}
	}
	if len(leaked) > 0 {
		return fmt.Errorf("%d goroutines of %s still running:\n%s", len(leaked), prefix, strings.Join(leaked, "\n\n"))
	}
	return nil
}

// Stacks returns the stack of every goroutine.
func Stacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}
