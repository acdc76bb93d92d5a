// Package provider is the catalog of OAuth2 providers that an
// oauth2_upstream handler or connect page can name instead of typing their
// URLs and quirks: one embedded data file (catalog.json), one entry per
// provider, each citing the provider's own documentation for every setting
// it encodes. An entry expands, with the user's parameters (a Microsoft
// tenant, a Salesforce My Domain, a Zoho data centre), into the settings
// the handler and the connect page take; an explicit option always wins
// over them, which is the handler's business, not this package's. It
// imports no Caddy.
package provider

import (
	_ "embed"
	"fmt"
	"strings"
)

//go:embed catalog.json
var catalogJSON []byte

// builtin is the embedded catalog, parsed once: immutable data, never
// changed after the package loads.
var builtin, builtinErr = Parse(catalogJSON)

// Builtin returns the embedded catalog, or why it does not load (a build
// whose catalog.json is broken refuses every provider, rather than serve
// half of one).
func Builtin() (*Catalog, error) {
	if builtinErr != nil {
		return nil, fmt.Errorf("the embedded provider catalog: %w", builtinErr)
	}
	return builtin, nil
}

// Lookup returns the embedded catalog's entry called name.
func Lookup(name string) (*Entry, error) {
	c, err := Builtin()
	if err != nil {
		return nil, err
	}
	return c.Lookup(name)
}

// Catalog is a set of provider entries by name.
type Catalog struct {
	entries map[string]*Entry
	names   []string // sorted
}

// Lookup returns the entry called name; the error names the known ones.
func (c *Catalog) Lookup(name string) (*Entry, error) {
	if e, ok := c.entries[name]; ok {
		return e, nil
	}
	return nil, fmt.Errorf("unknown provider %q (the catalog has %s)", name, strings.Join(c.names, ", "))
}

// Entries returns every entry, sorted by name.
func (c *Catalog) Entries() []*Entry {
	out := make([]*Entry, len(c.names))
	for i, name := range c.names {
		out[i] = c.entries[name]
	}
	return out
}

// ParseArgs reads the arguments of a `provider <name> [<key>=<value>...]`
// option: the entry's name and its parameters. It checks their shape only;
// Entry.Expand checks the names and values, once placeholders in the values
// are replaced.
func ParseArgs(args []string) (name string, params map[string]string, err error) {
	if len(args) == 0 {
		return "", nil, fmt.Errorf("provider: want <name> [<key>=<value>...]")
	}
	name = args[0]
	for _, arg := range args[1:] {
		key, value, ok := strings.Cut(arg, "=")
		if !ok || key == "" || value == "" {
			return "", nil, fmt.Errorf("provider %s: %q is not <key>=<value>", name, arg)
		}
		if params == nil {
			params = make(map[string]string)
		}
		if _, dup := params[key]; dup {
			return "", nil, fmt.Errorf("provider %s: parameter %q given twice", name, key)
		}
		params[key] = value
	}
	return name, params, nil
}

// ParseOption reads the arguments of a `provider <name> [<key>=<value>...]`
// option as ParseArgs does, and refuses a name the catalog lacks.
func ParseOption(args []string) (name string, params map[string]string, err error) {
	if name, params, err = ParseArgs(args); err != nil {
		return "", nil, err
	}
	if _, err := Lookup(name); err != nil {
		return "", nil, err
	}
	return name, params, nil
}

// Resolve returns the settings of entry name expanded with params, each
// value passed through replace first (which replaces placeholders such as
// {env.TENANT}). ok is false when name is empty: no provider is named,
// and then params must be empty too.
func Resolve(name string, params map[string]string, replace func(string) string) (s Settings, ok bool, err error) {
	if name == "" {
		if len(params) > 0 {
			return Settings{}, false, fmt.Errorf("provider_params without provider")
		}
		return Settings{}, false, nil
	}
	entry, err := Lookup(name)
	if err != nil {
		return Settings{}, false, err
	}
	replaced := make(map[string]string, len(params))
	for k, v := range params {
		replaced[k] = replace(v)
	}
	s, err = entry.Expand(replaced)
	return s, err == nil, err
}
