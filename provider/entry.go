package provider

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// Entry is one provider: the settings it gives a handler and a connect
// page, what it knows of the provider's refresh behaviour, and the
// documentation each of them comes from. URLs, token_params and
// authorize_params values may hold {name} templates, filled from Params.
type Entry struct {
	// Name is what `provider <name>` says: lower-case letters, digits, '_'.
	Name string `json:"name"`
	// Title names the provider (and the API) for people.
	Title string `json:"title"`
	// Params are the values a user gives as key=value, by key.
	Params map[string]Param `json:"params,omitempty"`
	// TokenURL is the token endpoint (a template).
	TokenURL string `json:"token_url"`
	// AuthorizeURL is the authorization endpoint (a template), for the
	// connect page.
	AuthorizeURL string `json:"authorize_url,omitempty"`
	// ClientAuth is the handler's client_auth value the provider's
	// documentation shows (secret_basic, secret_post, ...).
	ClientAuth string `json:"client_auth,omitempty"`
	// Scopes are sent with every grant and, when neither the connect page
	// nor the handler names any, in the authorization request.
	Scopes []string `json:"scopes,omitempty"`
	// TokenParams are extra token-request form fields (templates).
	TokenParams map[string]string `json:"token_params,omitempty"`
	// AuthorizeParams are extra authorization request parameters that a
	// refresh token needs (access_type=offline, prompt=consent, ...).
	AuthorizeParams map[string]string `json:"authorize_params,omitempty"`
	// RefreshMode is the handler's refresh value the provider's behaviour
	// calls for (reactive, when no expires_in comes).
	RefreshMode string `json:"refresh_mode,omitempty"`
	// HeaderScheme is the scheme the provider's APIs want the token under.
	HeaderScheme string `json:"header_scheme,omitempty"`
	// ExtraFields are token response fields worth exposing (added to the
	// handler's default extra_fields).
	ExtraFields []string `json:"extra_fields,omitempty"`
	// CallbackFields are values the redirect back carries besides the
	// code (Intuit's realmId): the connect page keeps them with the key
	// set, and the handler exposes them as extra fields.
	CallbackFields []string `json:"callback_fields,omitempty"`
	// Issuer is the issuer identifier the redirect back carries as iss
	// (RFC 9207), when the provider documents that it sends one.
	Issuer string `json:"issuer,omitempty"`
	// Refresh is what the documentation says of refreshes: information.
	Refresh Refresh `json:"refresh,omitzero"`
	// ErrorQuirks says how the token endpoint reports errors when it
	// departs from RFC 6749 section 5.2 (an error in a 200 body).
	ErrorQuirks string `json:"error_quirks,omitempty"`
	// Notes are further facts a user of the entry should know.
	Notes []Note `json:"notes,omitempty"`
	// Sources cite the provider's documentation, each for the fields it
	// supports.
	Sources []Source `json:"sources"`
}

// Param is one key=value parameter of an entry.
type Param struct {
	// Kind says which values are allowed: label (one DNS label), host (a
	// DNS name, with an optional :port), segment (one URL path segment)
	// or choice (one of Choices' keys, which stands for its value).
	Kind string `json:"kind"`
	// Default is the value when none is given; none: the parameter is
	// required.
	Default string `json:"default,omitempty"`
	// Example is a value of a required parameter, for documentation and
	// tests.
	Example string `json:"example,omitempty"`
	// Choices are the allowed values of a choice, each standing for what
	// the templates get.
	Choices map[string]string `json:"choices,omitempty"`
	// Doc says what the value is, for people.
	Doc string `json:"doc"`
}

// Refresh is what a provider's documentation says of its refreshes.
type Refresh struct {
	// Rotation: every_refresh (each refresh returns a new refresh token,
	// to be stored), configurable (per client, by the provider's admin) or
	// never (the refresh token stays the same).
	Rotation string `json:"rotation,omitempty"`
	// ScopesOnRefresh: required or optional.
	ScopesOnRefresh string `json:"scopes_on_refresh,omitempty"`
	// ExpiresIn: sent, or absent (only a 401 says the token is dead).
	ExpiresIn string `json:"expires_in,omitempty"`
	// TokenLifetime says how long a refresh token lives.
	TokenLifetime string `json:"token_lifetime,omitempty"`
}

// Note is a fact about a provider and where its documentation says it.
type Note struct {
	Text   string `json:"text"`
	Source string `json:"source"`
}

// Source is a page of the provider's documentation and the fields of the
// entry it supports: field names as in the JSON, "refresh.<field>" and
// "params.<key>".
type Source struct {
	URL string   `json:"url"`
	For []string `json:"for"`
}

var (
	entryNamePattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)
	templatePattern  = regexp.MustCompile(`\{([^{}]*)\}`)
	enumValues       = map[string][]string{
		"refresh.rotation":          {"every_refresh", "configurable", "never"},
		"refresh.scopes_on_refresh": {"required", "optional"},
		"refresh.expires_in":        {"sent", "absent"},
	}
)

// Parse reads a catalog document ({"providers": [...]}), refusing unknown
// fields, duplicate names and entries that do not validate.
func Parse(data []byte) (*Catalog, error) {
	var doc struct {
		Providers []*Entry `json:"providers"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("decoding the catalog: %w", err)
	}
	c := &Catalog{entries: make(map[string]*Entry)}
	for _, e := range doc.Providers {
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("provider %q: %w", e.Name, err)
		}
		if _, dup := c.entries[e.Name]; dup {
			return nil, fmt.Errorf("provider %q: listed twice", e.Name)
		}
		c.entries[e.Name] = e
		c.names = append(c.names, e.Name)
	}
	slices.Sort(c.names)
	return c, nil
}

// validate checks an entry's shape: a name, templates that name declared
// parameters, parameters that are all used and whose defaults and examples
// are allowed values, URLs that expand to plain https, known enumeration
// values, and a source for every field set.
func (e *Entry) validate() error {
	switch {
	case !entryNamePattern.MatchString(e.Name):
		return fmt.Errorf("name: want lower-case letters, digits and '_'")
	case e.Title == "":
		return fmt.Errorf("title is required")
	case e.TokenURL == "":
		return fmt.Errorf("token_url is required")
	}
	if err := e.validateTemplates(); err != nil {
		return err
	}
	for key, p := range e.Params {
		if err := p.validate(); err != nil {
			return fmt.Errorf("params.%s: %w", key, err)
		}
	}
	for field, allowed := range enumValues {
		if v := e.fieldValue(field); v != "" && !slices.Contains(allowed, v) {
			return fmt.Errorf("%s %q: must be one of %s", field, v, strings.Join(allowed, ", "))
		}
	}
	if _, err := e.Expand(e.ExampleParams()); err != nil {
		return err
	}
	for i, n := range e.Notes {
		if n.Text == "" || !strings.HasPrefix(n.Source, "https://") {
			return fmt.Errorf("notes[%d]: want a text and an https source", i)
		}
	}
	return e.validateSources()
}

// templates returns every string that may hold {name} templates.
func (e *Entry) templates() []string {
	out := []string{e.TokenURL, e.AuthorizeURL, e.Issuer}
	for _, v := range e.TokenParams {
		out = append(out, v)
	}
	for _, v := range e.AuthorizeParams {
		out = append(out, v)
	}
	return out
}

// validateTemplates checks that every {name} is a declared parameter and
// that every parameter is used.
func (e *Entry) validateTemplates() error {
	used := make(map[string]bool)
	for _, s := range e.templates() {
		for _, m := range templatePattern.FindAllStringSubmatch(s, -1) {
			if _, ok := e.Params[m[1]]; !ok {
				return fmt.Errorf("template %q names no parameter", m[0])
			}
			used[m[1]] = true
		}
	}
	for key := range e.Params {
		if !used[key] {
			return fmt.Errorf("params.%s: no template uses it", key)
		}
	}
	return nil
}

// validate checks a parameter's kind, choices, and its default or
// example.
func (p Param) validate() error {
	if _, ok := paramKinds[p.Kind]; !ok {
		return fmt.Errorf("kind %q: must be one of %s", p.Kind, strings.Join(slices.Sorted(maps.Keys(paramKinds)), ", "))
	}
	if p.Doc == "" {
		return fmt.Errorf("doc is required")
	}
	if (p.Kind == kindChoice) != (len(p.Choices) > 0) {
		return fmt.Errorf("choices go with kind %s, and only with it", kindChoice)
	}
	if (p.Default == "") == (p.Example == "") {
		return fmt.Errorf("want a default, or (for a required parameter) an example")
	}
	for _, v := range []string{p.Default, p.Example} {
		if err := p.check(v); v != "" && err != nil {
			return fmt.Errorf("%q: %w", v, err)
		}
	}
	return nil
}

// fieldValue is the value of a field as sources name it, "" when unset;
// a list or a map is "set" when it has elements.
func (e *Entry) fieldValue(field string) string {
	if key, ok := strings.CutPrefix(field, "params."); ok {
		if _, declared := e.Params[key]; declared {
			return "set"
		}
		return ""
	}
	values := map[string]string{
		"token_url": e.TokenURL, "authorize_url": e.AuthorizeURL, "client_auth": e.ClientAuth,
		"refresh_mode": e.RefreshMode, "header_scheme": e.HeaderScheme, "issuer": e.Issuer,
		"error_quirks": e.ErrorQuirks, "refresh.rotation": e.Refresh.Rotation,
		"refresh.scopes_on_refresh": e.Refresh.ScopesOnRefresh, "refresh.expires_in": e.Refresh.ExpiresIn,
		"refresh.token_lifetime": e.Refresh.TokenLifetime,
		"scopes":                 nonEmpty(len(e.Scopes)), "token_params": nonEmpty(len(e.TokenParams)),
		"authorize_params": nonEmpty(len(e.AuthorizeParams)), "extra_fields": nonEmpty(len(e.ExtraFields)),
		"callback_fields": nonEmpty(len(e.CallbackFields)),
	}
	return values[field]
}

// sourcedFields are the fields whose setting a source must support; the
// name and title are not claims about the provider.
var sourcedFields = []string{
	"token_url", "authorize_url", "client_auth", "scopes", "token_params", "authorize_params",
	"refresh_mode", "header_scheme", "extra_fields", "callback_fields", "issuer", "error_quirks",
	"refresh.rotation", "refresh.scopes_on_refresh", "refresh.expires_in", "refresh.token_lifetime",
}

// validateSources checks that the entry has sources, that each is an https
// page supporting fields the entry sets, and that every field set has one.
func (e *Entry) validateSources() error {
	if len(e.Sources) == 0 {
		return fmt.Errorf("sources: every entry cites the provider's documentation")
	}
	covered := make(map[string]bool)
	for i, s := range e.Sources {
		if !strings.HasPrefix(s.URL, "https://") || len(s.For) == 0 {
			return fmt.Errorf("sources[%d]: want an https url and the fields it supports", i)
		}
		for _, field := range s.For {
			known := slices.Contains(sourcedFields, field) || strings.HasPrefix(field, "params.")
			if !known || e.fieldValue(field) == "" {
				return fmt.Errorf("sources[%d]: %q is no field this entry sets", i, field)
			}
			covered[field] = true
		}
	}
	fields := slices.Clone(sourcedFields)
	for key := range e.Params {
		fields = append(fields, "params."+key)
	}
	for _, field := range fields {
		if e.fieldValue(field) != "" && !covered[field] {
			return fmt.Errorf("%s is set but no source supports it", field)
		}
	}
	return nil
}

func nonEmpty(n int) string {
	if n == 0 {
		return ""
	}
	return "set"
}

// ExampleParams returns the example value of every required parameter:
// parameters with which the entry expands.
func (e *Entry) ExampleParams() map[string]string {
	out := make(map[string]string)
	for key, p := range e.Params {
		if p.Default == "" {
			out[key] = p.Example
		}
	}
	return out
}
