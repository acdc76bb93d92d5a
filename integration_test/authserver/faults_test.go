package authserver

import (
	"errors"
	"net/http"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/oauth2"
)

// Scenario: each armed fault answers one token request, in the order armed,
// before fosite sees it: the refresh token presented is not spent, so it
// buys a token once the faults are used up, and no reuse is detected.
func TestInjectedFaultsSpendNoRefreshToken(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	conf := defaultConfig(s)
	seed := mustSeed(t, s, DefaultClientID)

	s.InjectFaults(FaultInvalidRequest, 1)
	s.InjectFaults(FaultUnavailable, 1)
	s.InjectFaults(FaultReset, 1)
	if got := s.ArmedFaults(); got != 3 {
		t.Fatalf("ArmedFaults() = %d; want 3", got)
	}
	tests := []struct {
		name  string
		check func(err error) bool
	}{
		{"400 invalid_request", func(err error) bool {
			var re *oauth2.RetrieveError
			return errors.As(err, &re) && re.Response.StatusCode == http.StatusBadRequest &&
				re.ErrorCode == "invalid_request" && re.ErrorDescription != ""
		}},
		{"503", func(err error) bool {
			var re *oauth2.RetrieveError
			return errors.As(err, &re) && re.Response.StatusCode == http.StatusServiceUnavailable
		}},
		{"connection reset", func(err error) bool { return errors.Is(err, syscall.ECONNRESET) }},
	}
	for _, tt := range tests {
		if _, err := refresh(ctx, conf, seed); !tt.check(err) {
			t.Errorf("refresh() with fault %s armed = %v; want that fault", tt.name, err)
		}
	}

	tok := mustRefresh(t, ctx, conf, seed)
	if !introspect(t, ctx, s, tok.AccessToken) {
		t.Errorf("introspect(token granted after the faults) = inactive; want active")
	}
	injected := s.InjectedFaults()
	var kinds []Fault
	for _, f := range injected {
		kinds = append(kinds, f.Fault)
	}
	if want := []Fault{FaultInvalidRequest, FaultUnavailable, FaultReset}; !slices.Equal(kinds, want) {
		t.Errorf("InjectedFaults() = %v; want %v", kinds, want)
	}
	if got := s.ArmedFaults(); got != 0 {
		t.Errorf("ArmedFaults() after use = %d; want 0", got)
	}
	if grants, attempts := s.Grants(), s.GrantAttempts(); grants != 1 || attempts != 1 {
		t.Errorf("Grants(), GrantAttempts() = %d, %d; want 1, 1 (faults never reach fosite)", grants, attempts)
	}
	if got := s.ReuseDetections(); got != 0 {
		t.Errorf("ReuseDetections() = %d; want 0", got)
	}
}
