package integration_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// suiteServers are every authorization server the suite started, kept after
// their test ends so that the leak check knows every token they issued.
var suiteServers struct {
	mu      sync.Mutex // guards servers and others
	servers []*authserver.Server
	// others report the tokens of other issuers (popserver).
	others []func() []string
}

// registerTokenIssuer adds the tokens that tokenValues reports to the
// leak check.
func registerTokenIssuer(tokenValues func() []string) {
	suiteServers.mu.Lock()
	defer suiteServers.mu.Unlock()
	suiteServers.others = append(suiteServers.others, tokenValues)
}

func registerAuthServer(s *authserver.Server) {
	suiteServers.mu.Lock()
	defer suiteServers.mu.Unlock()
	suiteServers.servers = append(suiteServers.servers, s)
}

// tokenPrefix is fosite's marker before a token's first part ("ory_at_",
// "ory_rt_", "ory_ac_"), stripped so that a part can be found without it.
var tokenPrefix = regexp.MustCompile(`^ory_[a-z]{2}_`)

// minPiece is the shortest token part the check looks for. fosite's parts
// are 43 characters (32 bytes in unpadded base64url); shorter ones would
// not be secrets.
const minPiece = 16

// tokenPieces splits every issued token into its dot-separated parts,
// prefix removed, so that a log holding a token, or only one of its halves,
// is caught. It returns the parts and the length of the shortest.
func tokenPieces(values []string) (map[string]string, int) {
	pieces := map[string]string{}
	width := 0
	for _, v := range values {
		for _, part := range strings.Split(v, ".") {
			part = tokenPrefix.ReplaceAllString(part, "")
			if len(part) < minPiece {
				continue
			}
			if width == 0 || len(part) < width {
				width = len(part)
			}
			pieces[part] = v
		}
	}
	// Index every part by its first width characters: a window of that
	// size over the logs finds any of them.
	byPrefix := make(map[string]string, len(pieces))
	for part, v := range pieces {
		byPrefix[part[:width]] = v
	}
	return byPrefix, width
}

// Scenario 9: across the whole suite, no access or refresh token value that
// an authorization server issued, nor the client secret, appears in any
// line a sidecar logged (invariant 7). It returns the exit code.
func checkLogsHoldNoTokens() int {
	suiteServers.mu.Lock()
	var values []string
	for _, s := range suiteServers.servers {
		values = append(values, s.TokenValues()...)
	}
	for _, tokenValues := range suiteServers.others {
		values = append(values, tokenValues()...)
	}
	suiteServers.mu.Unlock()
	logs, err := filepath.Glob(filepath.Join(logDir, "*.log"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: leak check:", err)
		return 1
	}
	if len(logs) == 0 {
		return 0 // no sidecar ran (a -run filter)
	}
	if len(values) == 0 {
		fmt.Fprintln(os.Stderr, "e2e: leak check: sidecars ran but no token was issued; the check would prove nothing")
		return 1
	}
	pieces, width := tokenPieces(values)
	var leaks []string
	lines := 0
	for _, path := range logs {
		n, found, err := scanLog(path, pieces, width)
		lines += n
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e: leak check:", err)
			return 1
		}
		leaks = append(leaks, found...)
	}
	if len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: scenario 9 FAILED: %d log lines hold a token value or the client secret:\n", len(leaks))
		for _, l := range leaks[:min(len(leaks), 10)] {
			fmt.Fprintln(os.Stderr, "  ", l)
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: scenario 9: %d token values issued, %d lines in %d sidecar logs, none holds a token or the client secret\n",
		len(values), lines, len(logs))
	return 0
}

// scanLog returns the number of lines in the log at path and the lines (by
// file and number, never quoted: they hold a secret) that hold a token
// piece or the client secret.
func scanLog(path string, pieces map[string]string, width int) (int, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var leaks []string
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		what := ""
		if strings.Contains(line, authserver.DefaultClientSecret) {
			what = "the client secret"
		} else if holdsPiece(line, pieces, width) {
			what = "a token value"
		}
		if what != "" {
			leaks = append(leaks, fmt.Sprintf("%s:%d holds %s", filepath.Base(path), n, what))
		}
	}
	return n, leaks, sc.Err()
}

// holdsPiece slides a window of width characters over every run of
// base64url characters of line that is long enough to hold a token piece.
func holdsPiece(line string, pieces map[string]string, width int) bool {
	isB64 := func(c byte) bool {
		return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
	}
	for i := 0; i < len(line); {
		if !isB64(line[i]) {
			i++
			continue
		}
		j := i
		for j < len(line) && isB64(line[j]) {
			j++
		}
		for k := i; k+width <= j; k++ {
			if _, ok := pieces[line[k:k+width]]; ok {
				return true
			}
		}
		i = j
	}
	return false
}

// Scenario 9's check must be able to fail: it finds a token, or half of
// one, planted in a log line, and passes a clean line.
func TestLeakCheckFindsPlantedTokens(t *testing.T) {
	token := "ory_at_" + strings.Repeat("A", 43) + "." + strings.Repeat("B", 43)
	pieces, width := tokenPieces([]string{token})
	tests := []struct {
		name string
		line string
		want bool
	}{
		{name: "whole token", line: `{"msg":"x","token":"` + token + `"}`, want: true},
		{name: "signature glued to other text", line: "Authorization: Bearer xyz" + strings.Repeat("B", 43), want: true},
		{name: "first part in a form", line: "refresh_token=" + strings.Repeat("A", 43) + "&x=1", want: true},
		{name: "clean line with a digest", line: `{"msg":"refreshed key set","generation":3,"sha256":"` + strings.Repeat("ab", 32) + `"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := holdsPiece(tt.line, pieces, width); got != tt.want {
				t.Errorf("holdsPiece(%q) = %t; want %t", tt.line, got, tt.want)
			}
		})
	}
}
