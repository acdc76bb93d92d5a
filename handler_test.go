package oauth2upstream

import (
	"net/http"
	"testing"
)

// The client's own Authorization header never reaches the upstream: the
// injected one replaces it (invariant 1).
func TestInjectionReplacesClientHeader(t *testing.T) {
	t.Parallel()
	te := newTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", ClientSecret: "s", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))

	req, _ := http.NewRequest(http.MethodGet, s.server.URL+"/x", nil)
	req.Header.Add("Authorization", "Bearer client-own")
	req.Header.Add("Authorization", "Basic Y2xpZW50Og==")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d; want 200", resp.StatusCode)
	}
	seen := api.seen()
	if len(seen) != 1 || len(seen[0].Authorization) != 1 || seen[0].Authorization[0] != "Bearer at-1" {
		t.Fatalf("upstream saw %+v; want exactly one Authorization: Bearer at-1", seen)
	}
}
