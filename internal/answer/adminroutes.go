package answer

import (
	"fmt"
	"net/http"
	"strings"
)

// Where the module's routes live on Caddy's admin endpoint, and the one
// answer that a route of one family gives to the CLI of another.
const (
	// AdminPrefix is the prefix of every route of the module.
	AdminPrefix = "/oauth2_upstream/"
	// ConnectAdminPrefix is the connect page's route, beside the admin
	// API's.
	ConnectAdminPrefix = AdminPrefix + "connect/"
)

// ConnectURL is the answer of GET /oauth2_upstream/connect/<name>: where a
// key set is connected in a browser.
type ConnectURL struct {
	KeySet     string `json:"key_set"`
	ConnectURL string `json:"connect_url"`
}

// MethodNotAllowed answers 405 naming the allowed methods.
func MethodNotAllowed(allowed ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		AdminProblem(w, http.StatusMethodNotAllowed, "Method not allowed",
			fmt.Sprintf("%s is not allowed here; use %s", r.Method, strings.Join(allowed, " or ")), "")
	}
}

// NotFound answers 404 naming the path: the catch-all of an admin route.
func NotFound(w http.ResponseWriter, r *http.Request) {
	AdminProblem(w, http.StatusNotFound, "Not found", fmt.Sprintf("no such resource %q", r.URL.Path), "")
}
