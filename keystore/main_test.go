package keystore_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain checks, after the whole suite, that no goroutine of this package
// (a Redis lock's renewal) outlived its test.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := checkLeaks(10 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "leak check:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func checkLeaks(patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for {
		err := findLeaks()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond) // goroutines wind down on their own; nothing to wait on
	}
}

func findLeaks() error {
	var leaked []string
	for _, g := range goroutineStacks() {
		if strings.Contains(g, "caddy-oauth2-upstream/keystore.") {
			leaked = append(leaked, g)
		}
	}
	if len(leaked) > 0 {
		return fmt.Errorf("%d goroutines of this package still running:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	}
	return nil
}
