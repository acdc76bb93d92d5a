package integration_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// The connect page's basic_auth account, as the README sets it up.
const (
	operatorUser     = "operator"
	operatorPassword = "connect-page-password"
)

// operatorSidecar is a sidecar as the README deploys one for operators:
// the admin endpoint on a unix socket, and the connect page on a port of
// its own behind basic_auth.
type operatorSidecar struct {
	*sidecar.Process
	dir        string // the sidecar's directory: Caddyfile, home
	caddyfile  string
	adminAddr  string // unix/<socket>
	connectURL string // http://127.0.0.1:<port>, the connect page
	keystore   string // the file keystore's directory
}

// connectPort reserves the connect page's port, which the authorization
// server must know as the redirect URI's before the sidecar starts.
func connectPort(t *testing.T) (port int, redirectURI string) {
	t.Helper()
	port, err := sidecar.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port, fmt.Sprintf("http://127.0.0.1:%d/callback", port)
}

// newConnectAuthServer is an authorization server whose default client may
// be redirected back to redirectURI.
func newConnectAuthServer(t *testing.T, redirectURI string) *authserver.Server {
	t.Helper()
	return newAuthServer(t, authserver.Config{AccessTokenLifespan: 10 * tokenLifespan, Clients: []authserver.Client{{
		ID: authserver.DefaultClientID, Secret: authserver.DefaultClientSecret, RedirectURIs: []string{redirectURI},
	}}})
}

// startOperatorSidecar starts the real binary with a proxy site to
// upstream (handler holds extra oauth2_upstream lines) and a connect page
// on port connect.
func startOperatorSidecar(t *testing.T, auth *authserver.Server, upstream string, connect int, handler ...string) *operatorSidecar {
	t.Helper()
	proxyPort, err := sidecar.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(operatorPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	o := &operatorSidecar{dir: dir, adminAddr: "unix/" + filepath.Join(dir, "admin.sock"),
		connectURL: fmt.Sprintf("http://127.0.0.1:%d", connect), keystore: filepath.Join(dir, "keystore")}
	lines := append([]string{
		"token_url " + auth.TokenURL(), "client_id " + authserver.DefaultClientID, "client_secret {env.CLIENT_SECRET}",
		"keystore file " + o.keystore, "scopes api", "min_refresh_interval " + minRefreshInterval.String(),
	}, handler...)
	caddyfile := fmt.Sprintf(`{
	admin %s|0600
	persist_config off
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	oauth2_upstream {
		%s
	}
	reverse_proxy %s
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	basic_auth {
		%s %s
	}
	oauth2_upstream_connect {
		authorize_url %s
		authorize_param prompt consent
	}
}
`, o.adminAddr, proxyPort, strings.Join(lines, "\n\t\t"), upstream, connect, operatorUser, hash, auth.AuthorizeURL())
	name := fmt.Sprintf("%03d-%s.log", logSeq.Add(1), unsafeName.ReplaceAllString(t.Name(), "_"))
	p, err := sidecar.NewWithCaddyfile(sidecar.Options{Bin: caddyBin, Dir: dir, Port: proxyPort,
		Env: []string{"CLIENT_SECRET=" + authserver.DefaultClientSecret}, LogPath: filepath.Join(logDir, name)}, caddyfile)
	if err != nil {
		t.Fatalf("sidecar.NewWithCaddyfile() = %v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stopping the sidecar on %s: %v", p.Addr, err)
		}
	})
	mustStart(t, p)
	o.Process, o.caddyfile = p, filepath.Join(dir, "Caddyfile")
	return o
}

// cli runs `caddy oauth2-upstream args...` with stdin, and returns its
// standard output, standard error and exit code.
func cli(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), caddyBin, append([]string{"oauth2-upstream"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("running caddy oauth2-upstream %q: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// mustCLI is cli for a command that must succeed.
func mustCLI(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, errOut, code := cli(t, stdin, args...)
	if code != 0 {
		t.Fatalf("caddy oauth2-upstream %q exited %d:\n%s%s", args, code, out, errOut)
	}
	return out
}

// The CLI against a running sidecar (the real binary): seed three key
// sets from standard input, list them all across pages (Link rel="next"),
// as a table and as JSON, refresh one, and print the Connect address of
// another, which the connect page (behind basic_auth) serves; the admin
// endpoint is found by --address or by --config; an unknown key set fails
// with the admin endpoint's 404. No output holds a token value.
func TestCLIAgainstRunningSidecar(t *testing.T) {
	t.Parallel()
	port, redirectURI := connectPort(t)
	auth := newConnectAuthServer(t, redirectURI)
	rs := newResourceServer(t, auth)
	upstream, _ := url.Parse(rs.URL())
	o := startOperatorSidecar(t, auth, upstream.Host, port,
		"key_set {http.request.header.X-Account}", "key_set_allow acct-[0-9]+")
	admin := []string{"--address", o.adminAddr}

	var outputs []string
	for _, name := range []string{"acct-1", "acct-2", "acct-3"} {
		out := mustCLI(t, seedToken(t, auth)+"\n", append([]string{"seed", name}, admin...)...)
		if !strings.Contains(out, name) {
			t.Errorf("seed %s printed %q; want its status", name, out)
		}
		outputs = append(outputs, out)
	}

	table := mustCLI(t, "", append([]string{"status", "--page-size", "2"}, admin...)...)
	outputs = append(outputs, table)
	// The table, without the words that follow it for key sets not ok.
	rows, _, _ := strings.Cut(table, "\n\n")
	lines := strings.Split(strings.TrimSpace(rows), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "KEY SET") {
		t.Fatalf("status --page-size 2 printed %d lines; want a header and 3 key sets:\n%s", len(lines), table)
	}
	for i, name := range []string{"acct-1", "acct-2", "acct-3"} {
		if fields := strings.Fields(lines[i+1]); fields[0] != name || fields[3] != "1" { // KEY SET STATE PROVIDER GENERATION
			t.Errorf("status line %d = %q; want %s at generation 1", i+1, lines[i+1], name)
		}
	}

	out := mustCLI(t, "", append([]string{"refresh", "acct-2", "--json"}, admin...)...)
	outputs = append(outputs, out)
	var refreshed credential.Status
	if err := json.Unmarshal([]byte(out), &refreshed); err != nil || refreshed.Name != "acct-2" || refreshed.Generation != 2 || refreshed.State != credential.StateOK {
		t.Errorf("refresh acct-2 --json = %s (%v); want acct-2 at generation 2, ok", out, err)
	}

	// --config: the admin address comes from the Caddyfile's admin option.
	out = mustCLI(t, "", "status", "--json", "--page-size", "1", "--config", o.caddyfile, "--adapter", "caddyfile")
	outputs = append(outputs, out)
	var all []credential.Status
	if err := json.Unmarshal([]byte(out), &all); err != nil || len(all) != 3 || all[1].Generation != 2 {
		t.Errorf("status --json --page-size 1 = %s (%v); want 3 key sets, acct-2 at generation 2", out, err)
	}

	req, _ := http.NewRequest(http.MethodGet, "http://"+o.Addr+"/orders", nil)
	req.Header.Set("X-Account", "acct-2")
	if r := do(newClient(t, 1), req); r.status != http.StatusOK {
		t.Errorf("request for acct-2 through the sidecar = %s; want 200", r)
	}

	connectURL := strings.TrimSpace(mustCLI(t, "", append([]string{"connect-url", "acct-1"}, admin...)...))
	if want := o.connectURL + "/key_sets/acct-1/connect"; connectURL != want {
		t.Errorf("connect-url acct-1 = %q; want %q", connectURL, want)
	}
	page, _ := http.NewRequest(http.MethodGet, connectURL, nil)
	if r := do(newClient(t, 1), page); r.status != http.StatusUnauthorized {
		t.Errorf("the Connect page without credentials = %d; want 401 from basic_auth", r.status)
	}
	page.SetBasicAuth(operatorUser, operatorPassword)
	if r := do(newClient(t, 1), page); r.status != http.StatusOK || !strings.Contains(string(r.body), "Connect acct-1") {
		t.Errorf("the Connect page = %s; want 200 with its Connect button", r)
	}

	stdout, stderr, code := cli(t, "", append([]string{"status", "acct-9"}, admin...)...)
	if code == 0 || !strings.Contains(stdout+stderr, strconv.Itoa(http.StatusNotFound)) {
		t.Errorf("status acct-9 exited %d:\n%s%s\nwant a failure naming 404", code, stdout, stderr)
	}
	for _, value := range auth.TokenValues() {
		for _, out := range outputs {
			if strings.Contains(out, value) {
				t.Errorf("CLI output holds a token value:\n%s", out)
			}
		}
	}
}
