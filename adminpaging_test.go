package oauth2upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
)

// The key set list comes a page at a time (100 by default), by name, each
// page naming the next in a Link header: 251 key sets of two handlers are
// listed once each across three pages.
func TestAdminListPages(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "page-150x", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	selected := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "{http.request.header.X-Account}", KeySetAllow: "[a-z0-9-]+"}, hostPort(t, api.server.URL))
	var want []string
	for i := range 250 {
		name := fmt.Sprintf("page-%03d", i)
		selected.seedStore(t, name, "rt-0")
		if _, err := selected.handler.engine.Status(context.Background(), name); err != nil {
			t.Fatalf("Status(%q) = %v", name, err)
		}
		want = append(want, name)
	}
	want = append(want, "page-150x")
	slices.Sort(want)
	a, _ := adminFor(t)

	next := regexp.MustCompile(`^<(/oauth2_upstream/key_sets\?[^>]+)>; rel="next"$`)
	var got []string
	var sizes []int
	path := "/oauth2_upstream/key_sets"
	for path != "" {
		rec := adminCall(t, a, http.MethodGet, path, "")
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s = %d (%s); want 200", path, rec.Code, rec.Body)
		}
		var page []credential.Status
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
			t.Fatalf("decoding %s: %v", rec.Body, err)
		}
		sizes = append(sizes, len(page))
		for _, s := range page {
			got = append(got, s.Name)
		}
		path = ""
		if link := rec.Header().Get("Link"); link != "" {
			m := next.FindStringSubmatch(link)
			if m == nil {
				t.Fatalf("Link %q; want <...>; rel=\"next\"", link)
			}
			path = m[1]
		}
		if len(sizes) > 5 {
			t.Fatalf("more than 5 pages: %v", sizes)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("listed %d names over pages %v; want the %d key sets once each, by name", len(got), sizes, len(want))
	}
	if !slices.Equal(sizes, []int{100, 100, 51}) {
		t.Errorf("page sizes %v; want [100 100 51]", sizes)
	}

	rec := adminCall(t, a, http.MethodGet, "/oauth2_upstream/key_sets?limit=7&after=page-150", "")
	var page []credential.Status
	json.Unmarshal(rec.Body.Bytes(), &page)
	if len(page) != 7 || page[0].Name != "page-150x" || page[6].Name != "page-156" {
		t.Errorf("limit=7 after=page-150: %d key sets from %v; want 7, page-150x to page-156", len(page), page)
	}
}

// A page that cannot be read is a 400 problem naming the parameter.
func TestAdminListBadPage(t *testing.T) {
	t.Parallel()
	a, _ := adminFor(t)
	for _, query := range []string{"limit=0", "limit=1001", "limit=ten", "after=no%20spaces"} {
		rec := adminCall(t, a, http.MethodGet, "/oauth2_upstream/key_sets?"+query, "")
		var p answer.Problem
		json.Unmarshal(rec.Body.Bytes(), &p)
		if rec.Code != http.StatusBadRequest || p.Detail == "" {
			t.Errorf("GET key_sets?%s = %d %+v; want 400 with a detail", query, rec.Code, p)
		}
	}
}
