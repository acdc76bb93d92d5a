package integration_test

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// browserTimeout bounds the whole browser session.
const browserTimeout = 90 * time.Second

// chromium returns the path of a headless-capable Chromium, skipping the
// test when there is none, unless CI is set (then it fails: .ci/run
// installs Debian's chromium).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; .ci/run installs Debian's chromium")
	}
	t.Skip("chromium is not installed")
	return ""
}

// An operator connects an account in a real browser: headless Chromium
// opens the connect page (behind basic_auth) of the real sidecar, where
// key set "default" has never been seeded, presses Connect, signs in and
// consents at the fosite authorization server (PKCE S256, which it
// insists on and checks), and lands back on the status page, which shows
// the key set connected and ok. A request through the sidecar then reaches
// the resource server with the access token of that code exchange. A
// screenshot of the status page, phone-sized, is written under the test's
// temporary directory (and E2E_LOG_DIR when set).
func TestConnectInBrowser(t *testing.T) {
	t.Parallel()
	browser := chromium(t)
	port, redirectURI := connectPort(t)
	auth := newConnectAuthServer(t, redirectURI)
	rs := newResourceServer(t, auth)
	upstream, _ := url.Parse(rs.URL())
	o := startOperatorSidecar(t, auth, upstream.Host, port)

	before := get(newClient(t, 1), "http://"+o.Addr+"/orders")
	if before.status != http.StatusBadGateway || before.problem(t).OAuthError != "no_key_set" {
		t.Fatalf("request before connecting = %s; want 502 no_key_set", before)
	}

	options := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser),
		chromedp.NoSandbox, chromedp.WindowSize(412, 915), chromedp.UserDataDir(t.TempDir()))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), options...)
	defer cancelAlloc()
	ctx, cancelBrowser := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(ctx, browserTimeout)
	defer cancel()

	basic := base64.StdEncoding.EncodeToString([]byte(operatorUser + ":" + operatorPassword))
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders,
		network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": "Basic " + basic}}); err != nil {
		t.Fatalf("starting the browser: %v", err)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("browser: %s: %v\nsidecar log:\n%s", what, err, tailLog(o.LogPath))
		}
	}
	text := func(selector string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(selector)))
		if err != nil {
			t.Fatalf("browser: reading %s: %v", selector, err)
		}
		return strings.TrimSpace(s)
	}
	connect := chromedp.CSS(`#key-set-default button[name="connect"]`)
	do("opening the status page", chromedp.Navigate(o.connectURL+"/"), chromedp.WaitVisible(connect))
	stateBefore, button, meaning := text(`#key-set-default .state`), text(string(connect)), text(`#key-set-default .meaning`)
	do("pressing Connect", chromedp.Click(connect), chromedp.WaitVisible(chromedp.CSS(`#username`)))
	do("signing in", chromedp.SendKeys(chromedp.CSS(`#username`), authserver.LoginUser),
		chromedp.SendKeys(chromedp.CSS(`#password`), authserver.LoginPassword),
		chromedp.Click(chromedp.CSS(`#sign-in`)), chromedp.WaitVisible(chromedp.CSS(`#allow`)))
	do("consenting", chromedp.Click(chromedp.CSS(`#allow`)), chromedp.WaitVisible(chromedp.CSS(`.notice`)))
	notice, stateAfter, generation := text(`.notice`), text(`#key-set-default .state`), text(`#key-set-default dd`)
	location, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	screenshot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("browser: screenshot: %v", err)
	}
	shot := filepath.Join(t.TempDir(), "status-page.png")
	if err := os.WriteFile(shot, screenshot, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the status page: %s", shot)
	if dir := os.Getenv("E2E_LOG_DIR"); dir != "" {
		kept := filepath.Join(dir, "connect-status-page.png")
		if err := os.WriteFile(kept, screenshot, 0o600); err == nil {
			t.Logf("screenshot kept: %s", kept)
		}
	}

	if stateBefore != "needs_reauthorization" || button != "Connect" || meaning != credential.DescribeState(stateBefore, "no_key_set") {
		t.Errorf("before connecting: state %q, button %q, words %q; want needs_reauthorization (no_key_set), Connect, and words that say to connect",
			stateBefore, button, meaning)
	}
	if notice != "Connected default." || stateAfter != "ok" || strings.TrimSpace(generation) != "1" || location != o.connectURL+"/?connected=default" {
		t.Errorf("after consenting: at %s, notice %q, state %q, generation %q; want the status page saying Connected default., ok, 1",
			location, notice, stateAfter, generation)
	}

	ks, _ := readKeySet(t, o.keystore, keySetName)
	var exchanged string
	for _, issued := range auth.Issued() {
		if issued.GrantType == "authorization_code" {
			exchanged = issued.AccessToken
		}
	}
	if exchanged == "" || ks.Generation != 1 || ks.Token.AccessToken() != exchanged {
		t.Fatalf("stored key set generation %d; want generation 1 holding the code exchange's access token", ks.Generation)
	}
	after := get(newClient(t, 1), "http://"+o.Addr+"/orders")
	if after.status != http.StatusOK || after.echo(t).AuthorizationCount != 1 {
		t.Fatalf("request after connecting = %s; want 200 from the resource server", after)
	}
	if !introspect(t, auth, exchanged) {
		t.Errorf("the access token the resource server accepted is not the code exchange's, or not active")
	}
	if grants, _ := auth.GrantCounts(authserver.GrantRefreshToken); grants != 0 {
		t.Errorf("refresh grants = %d; want 0: the request used the exchanged token", grants)
	}
}

// tailLog returns the end of a log, for a failure message.
func tailLog(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}
