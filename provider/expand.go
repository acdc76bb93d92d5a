package provider

import (
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Settings are an entry's settings with its parameters filled in: what a
// handler and a connect page take from it.
type Settings struct {
	TokenURL        string
	AuthorizeURL    string
	ClientAuth      string
	Scopes          []string
	TokenParams     map[string]string
	AuthorizeParams map[string]string
	RefreshMode     string
	HeaderScheme    string
	ExtraFields     []string
	CallbackFields  []string
	Issuer          string
}

// Parameter kinds: each an allow-list of characters, so that a value lands
// in its place of the URL and nowhere else. No value can carry a '/', '?',
// '#', '@', '%' or whitespace, so none adds a path, a query, credentials or
// another host, or escapes its segment.
const (
	kindLabel   = "label"
	kindHost    = "host"
	kindSegment = "segment"
	kindChoice  = "choice"
)

var (
	// dnsLabel is one label of a host name (RFC 1123 section 2.1).
	dnsLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	// pathSegment is a path segment of unreserved characters (RFC 3986
	// section 2.3) that starts with a letter or digit: never "." or "..".
	pathSegment = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$`)
	paramKinds  = map[string]string{
		kindLabel:   "a DNS label: letters, digits and '-', at most 63",
		kindHost:    "a host name (DNS labels joined by '.'), with an optional :port",
		kindSegment: "a path segment: letters, digits, '.', '_', '~' and '-', starting with a letter or digit",
		kindChoice:  "one of the listed choices",
	}
)

// check refuses a value that is not of the parameter's kind.
func (p Param) check(value string) error {
	ok := false
	switch p.Kind {
	case kindLabel:
		ok = dnsLabel.MatchString(value)
	case kindHost:
		ok = validHost(value)
	case kindSegment:
		ok = pathSegment.MatchString(value)
	case kindChoice:
		_, ok = p.Choices[value]
	}
	if ok {
		return nil
	}
	if p.Kind == kindChoice {
		return fmt.Errorf("must be one of %s", strings.Join(slices.Sorted(maps.Keys(p.Choices)), ", "))
	}
	return fmt.Errorf("must be %s", paramKinds[p.Kind])
}

// validHost reports whether value is a DNS name of labels, at most 253
// long, with an optional port from 1 to 65535.
func validHost(value string) bool {
	host, port, hasPort := strings.Cut(value, ":")
	if hasPort {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return false
		}
	}
	if host == "" || len(host) > 253 {
		return false
	}
	for _, label := range strings.Split(host, ".") {
		if !dnsLabel.MatchString(label) {
			return false
		}
	}
	return true
}

// Expand fills the entry's templates with params (placeholders already
// replaced), the defaults standing in for those not given. An unknown
// parameter, a missing required one, or a value not of its kind is an
// error naming the entry and the parameter.
func (e *Entry) Expand(params map[string]string) (Settings, error) {
	values, err := e.paramValues(params)
	if err != nil {
		return Settings{}, err
	}
	fill := func(template string) string {
		return templatePattern.ReplaceAllStringFunc(template, func(m string) string {
			return values[m[1:len(m)-1]]
		})
	}
	fillMap := func(m map[string]string) map[string]string {
		if len(m) == 0 {
			return nil
		}
		out := make(map[string]string, len(m))
		for k, v := range m {
			out[k] = fill(v)
		}
		return out
	}
	s := Settings{
		TokenURL: fill(e.TokenURL), AuthorizeURL: fill(e.AuthorizeURL), Issuer: fill(e.Issuer),
		ClientAuth: e.ClientAuth, Scopes: slices.Clone(e.Scopes),
		TokenParams: fillMap(e.TokenParams), AuthorizeParams: fillMap(e.AuthorizeParams),
		RefreshMode: e.RefreshMode, HeaderScheme: e.HeaderScheme,
		ExtraFields: slices.Clone(e.ExtraFields), CallbackFields: slices.Clone(e.CallbackFields),
	}
	for field, u := range map[string]string{"token_url": s.TokenURL, "authorize_url": s.AuthorizeURL, "issuer": s.Issuer} {
		if err := checkExpandedURL(u); err != nil {
			return Settings{}, fmt.Errorf("provider %s: %s %q: %w", e.Name, field, u, err)
		}
	}
	return s, nil
}

// paramValues returns every parameter's value: the given one, checked
// against its kind (a choice replaced by what it stands for), else the
// default.
func (e *Entry) paramValues(params map[string]string) (map[string]string, error) {
	for _, key := range slices.Sorted(maps.Keys(params)) {
		if _, ok := e.Params[key]; !ok {
			known := "it takes none"
			if len(e.Params) > 0 {
				known = "it takes " + strings.Join(slices.Sorted(maps.Keys(e.Params)), ", ")
			}
			return nil, fmt.Errorf("provider %s: unknown parameter %q (%s)", e.Name, key, known)
		}
	}
	values := make(map[string]string, len(e.Params))
	for _, key := range slices.Sorted(maps.Keys(e.Params)) {
		p := e.Params[key]
		value, given := params[key]
		if !given {
			value = p.Default
		}
		if value == "" {
			return nil, fmt.Errorf("provider %s: parameter %s is required: %s", e.Name, key, p.Doc)
		}
		if err := p.check(value); err != nil {
			return nil, fmt.Errorf("provider %s: parameter %s=%q: %w", e.Name, key, value, err)
		}
		if p.Kind == kindChoice {
			value = p.Choices[value]
		}
		values[key] = value
	}
	return values, nil
}

// checkExpandedURL refuses an expanded URL that is not plain https with a
// host and no credentials or fragment: a second line of defence behind
// the parameter kinds.
func checkExpandedURL(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return err
	case u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" || u.Opaque != "":
		return fmt.Errorf("not a plain https URL")
	}
	return nil
}
