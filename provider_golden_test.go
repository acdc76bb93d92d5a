package oauth2upstream

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/oauth2upstream/caddy-oauth2-upstream/provider"
)

var updateGolden = flag.Bool("update", false, "rewrite the adapted and expanded sections of testdata/provider golden files")

// goldenSeparator separates a golden file's Caddyfile, adapted JSON and
// expanded JSON.
const goldenSeparator = "\n----------\n"

// providerExpansion is what a `provider` line expands to: the handler's
// JSON config with the entry's settings filled in, as if written by hand,
// and what a connect page with the same line takes.
type providerExpansion struct {
	Handler json.RawMessage  `json:"handler"`
	Connect connectExpansion `json:"connect"`
}

// connectExpansion is what the connect page takes from an entry.
type connectExpansion struct {
	AuthorizeURL    string            `json:"authorize_url,omitempty"`
	AuthorizeParams map[string]string `json:"authorize_params,omitempty"`
	Issuer          string            `json:"issuer,omitempty"`
	Scopes          []string          `json:"scopes,omitempty"`
	CallbackFields  []string          `json:"callback_fields,omitempty"`
}

// Each catalog entry has a golden file in testdata/provider: a Caddyfile
// naming it, the JSON it adapts to (compared by caddytest.CompareAdapt),
// and the handler's JSON once the entry fills the unset options, with what
// the connect page takes. `go test -run TestProviderGolden -update`
// rewrites the last two sections.
func TestProviderGolden(t *testing.T) {
	catalog, err := provider.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("testdata/provider/*.caddyfiletest")
	var names []string
	for _, file := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(file), ".caddyfiletest"))
	}
	for _, e := range catalog.Entries() {
		if !slices.Contains(names, e.Name) {
			t.Errorf("provider %s has no golden file testdata/provider/%s.caddyfiletest", e.Name, e.Name)
		}
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			sections := strings.Split(string(data), goldenSeparator)
			if len(sections) != 3 {
				t.Fatalf("%s: want a Caddyfile, adapted JSON and expanded JSON separated by ----------, got %d sections", file, len(sections))
			}
			input := strings.TrimSpace(sections[0]) + "\n"
			adapted, expanded := adaptAndExpand(t, input)
			if *updateGolden {
				out := strings.Join([]string{strings.TrimSpace(sections[0]), adapted, expanded}, goldenSeparator) + "\n"
				if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !caddytest.CompareAdapt(t, file, input, "caddyfile", strings.TrimSpace(sections[1])) {
				t.Errorf("%s: adapted JSON differs from the golden file", file)
			}
			if want := strings.TrimSpace(sections[2]); expanded != want {
				t.Errorf("%s: expanded JSON =\n%s\nwant\n%s", file, expanded, want)
			}
		})
	}
}

// adaptAndExpand adapts input and expands its handler's provider,
// returning both as indented JSON.
func adaptAndExpand(t *testing.T, input string) (adapted, expanded string) {
	t.Helper()
	raw, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []json.RawMessage `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	var h Handler
	if err := json.Unmarshal(findHandler(t, cfg.Apps.HTTP.Servers["srv0"].Routes[0].Handle), &h); err != nil {
		t.Fatal(err)
	}
	if _, err := applyTestProvider(t, &h); err != nil {
		t.Fatalf("applyProvider() = %v", err)
	}
	entry, _ := provider.Lookup(h.Provider)
	s, err := entry.Expand(h.ProviderParams)
	if err != nil {
		t.Fatal(err)
	}
	handlerJSON, err := json.Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	connect := connectExpansion{AuthorizeURL: s.AuthorizeURL, AuthorizeParams: s.AuthorizeParams, Issuer: s.Issuer, Scopes: s.Scopes, CallbackFields: s.CallbackFields}
	expandedJSON, err := json.Marshal(providerExpansion{Handler: handlerJSON, Connect: connect})
	if err != nil {
		t.Fatal(err)
	}
	return indentJSON(t, raw), indentJSON(t, expandedJSON)
}

func indentJSON(t *testing.T, raw []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "\t"); err != nil {
		t.Fatal(fmt.Errorf("indenting JSON: %w", err))
	}
	return buf.String()
}
