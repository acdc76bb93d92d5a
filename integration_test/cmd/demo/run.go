package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/resourceserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// rootModule is the module whose ./cmd/caddy the demo builds.
const rootModule = "github.com/oauth2upstream/caddy-oauth2-upstream"

// keySetName is the key set the demo's sidecar uses.
const keySetName = "default"

// run starts everything, runs the legacy client for cfg.duration (or until
// ctx ends), prints what happens to w, and stops everything it started.
func run(ctx context.Context, cfg config, w io.Writer) error {
	dir, err := os.MkdirTemp("", "oauth2-upstream-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := startStack(ctx, cfg, dir, w)
	if err != nil {
		return err
	}
	defer st.close()

	fmt.Fprintf(w, `
authorization server  %s   (fosite: refresh tokens rotate on every grant, reuse revokes the family,
                      access tokens live %s, responses carry no expires_in)
API                   %s   (accepts only active bearer tokens, asks the authorization server each time)
sidecar               %s   (Caddy: oauth2_upstream, then reverse_proxy to the API; keystore %s)
legacy client         POSTs to the sidecar every %s for %s, with no credentials at all

`, st.auth.TokenURL(), cfg.lifespan, st.api.URL(), st.sc.URL(), st.keystoreDir, cfg.interval, cfg.duration)

	d := &demo{w: w, start: time.Now(), sc: st.sc, api: st.api, keystoreDir: st.keystoreDir,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}}
	defer d.client.CloseIdleConnections()
	if err := d.openLog(); err != nil {
		return err
	}
	defer d.log.Close()

	runCtx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()
	tick := time.NewTicker(cfg.interval)
	defer tick.Stop()
	for runCtx.Err() == nil {
		d.request(ctx) // the last request may end after the run
		select {
		case <-runCtx.Done():
		case <-tick.C:
		}
	}
	d.followLog()
	fmt.Fprintf(w, "\nsummary over %s: %d requests, %d answered 200 to the client; the API answered 401 %d times;\n"+
		"the sidecar made %d grants, persisted generation %d, replayed %d requests; reuse detections: %d\n",
		time.Since(d.start).Round(time.Millisecond), d.requests, d.ok, st.api.Unauthorized(),
		st.auth.Grants(), d.generation, d.replays, st.auth.ReuseDetections())
	if d.requests == 0 || d.ok != d.requests {
		return fmt.Errorf("%d of %d requests were answered 200", d.ok, d.requests)
	}
	return nil
}

// stack is what the demo runs: the authorization server, the API, and the
// sidecar in front of it.
type stack struct {
	auth        *authserver.Server
	api         *resourceserver.Server
	sc          *sidecar.Process
	keystoreDir string
}

// startStack builds Caddy into dir and starts the three servers. On error
// it stops what it started.
func startStack(ctx context.Context, cfg config, dir string, w io.Writer) (_ *stack, err error) {
	repo := cfg.repo
	if repo == "" {
		if repo, err = findRepo(ctx); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(w, "building Caddy with the oauth2_upstream module from %s ...\n", repo)
	bin, err := sidecar.Build(ctx, repo, dir)
	if err != nil {
		return nil, err
	}
	st := &stack{keystoreDir: filepath.Join(dir, "keystore")}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	// No expires_in: like Salesforce, the provider never says when a token
	// dies, so the sidecar learns it from the API's 401, and replays.
	if st.auth, err = authserver.New(authserver.Config{AccessTokenLifespan: cfg.lifespan, Profile: authserver.Profile{OmitExpiresIn: true}}); err != nil {
		return nil, err
	}
	seed, err := st.auth.Seed(ctx, authserver.DefaultClientID, "api", "refresh_token")
	if err != nil {
		return nil, err
	}
	if st.api, err = resourceserver.New(st.auth.IntrospectURL(), authserver.ResourceServerClientID, authserver.ResourceServerClientSecret); err != nil {
		return nil, err
	}
	st.sc, err = sidecar.New(sidecar.Options{
		Bin: bin,
		Dir: filepath.Join(dir, "sidecar"),
		Handler: strings.Join([]string{
			"token_url " + st.auth.TokenURL(),
			"client_id " + authserver.DefaultClientID,
			"client_secret {env.CLIENT_SECRET}",
			"refresh_token {env.SEED_REFRESH_TOKEN}",
			"keystore file " + st.keystoreDir,
			// The demo's tokens live seconds, not an hour: a 401 to one
			// that old must still make a grant.
			"min_refresh_interval " + (cfg.lifespan / 4).String(),
		}, "\n"),
		Upstream: strings.TrimPrefix(st.api.URL(), "http://"),
		Env:      []string{"CLIENT_SECRET=" + authserver.DefaultClientSecret, "SEED_REFRESH_TOKEN=" + seed},
		Debug:    true,
	})
	if err != nil {
		return nil, err
	}
	return st, st.sc.Start(ctx)
}

// close stops whatever was started, the sidecar first (SIGTERM: it stores
// a refresh in flight before it exits).
func (st *stack) close() {
	if st.sc != nil {
		_ = st.sc.Stop()
	}
	if st.api != nil {
		_ = st.api.Close()
	}
	if st.auth != nil {
		_ = st.auth.Close()
	}
}

// findRepo asks the go command where the root module is: the replace
// directive of integration_test/go.mod points it at this checkout.
func findRepo(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", rootModule).Output()
	if err != nil {
		return "", fmt.Errorf("finding %s (run the demo from integration_test, or give -repo): %w", rootModule, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// demo runs the legacy client and narrates.
type demo struct {
	w           io.Writer
	start       time.Time
	sc          *sidecar.Process
	api         *resourceserver.Server
	keystoreDir string
	client      *http.Client

	log     *os.File
	partial []byte // an incomplete last log line, kept for the next read

	requests, ok, replays int
	generation            int64
}

func (d *demo) say(at time.Time, who, format string, args ...any) {
	fmt.Fprintf(d.w, "[%6.2fs] %-8s %s\n", at.Sub(d.start).Seconds(), who, fmt.Sprintf(format, args...))
}

// request sends one credential-less POST and narrates what it caused.
func (d *demo) request(ctx context.Context) {
	d.requests++
	body := fmt.Sprintf(`{"order":%d,"item":"widget","quantity":%d}`, d.requests, d.requests%7+1)
	sum := sha256.Sum256([]byte(body))
	sent := time.Now()
	d.say(sent, "client", "→ POST /api/orders (%d bytes, no Authorization header)", len(body))
	unauthorized := d.api.Unauthorized()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.sc.URL()+"/api/orders", strings.NewReader(body))
	if err != nil {
		d.say(time.Now(), "client", "✗ %v", err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.client.Do(req)
	if err != nil {
		d.say(time.Now(), "client", "✗ %v", err)
		return
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := d.api.Unauthorized() - unauthorized; n > 0 {
		d.say(sent, "api", "← 401 Unauthorized: the access token is no longer active (%d×)", n)
	}
	d.followLog()
	if resp.StatusCode != http.StatusOK {
		d.say(time.Now(), "client", "← %d %s", resp.StatusCode, bytes.TrimSpace(answer))
		return
	}
	d.ok++
	var echo resourceserver.Echo
	if err := json.Unmarshal(answer, &echo); err != nil {
		d.say(time.Now(), "client", "← 200, undecodable answer: %v", err)
		return
	}
	match := "matches"
	if echo.SHA256 != hex.EncodeToString(sum[:]) {
		match = "DIFFERS"
	}
	d.say(time.Now(), "client", "← 200 OK (the API got %d bytes, sha256 %s, %d Authorization header)", echo.Length, match, echo.AuthorizationCount)
}

func (d *demo) openLog() error {
	f, err := os.Open(d.sc.LogPath)
	if err != nil {
		return err
	}
	d.log = f
	return nil
}

// followLog prints the sidecar's log lines written since the last call
// that tell the story: seeding, refreshing, the rotated key set it stored,
// and replays.
func (d *demo) followLog() {
	data, err := io.ReadAll(d.log)
	if err != nil && !errors.Is(err, io.EOF) {
		d.say(time.Now(), "demo", "reading the sidecar's log: %v", err)
		return
	}
	data = append(d.partial, data...)
	end := bytes.LastIndexByte(data, '\n')
	if end < 0 {
		d.partial = data
		return
	}
	d.partial = append([]byte(nil), data[end+1:]...)
	for _, line := range bytes.Split(data[:end], []byte("\n")) {
		if e, ok := sidecar.ParseEntry(line); ok {
			d.narrate(e)
		}
	}
}

func (d *demo) narrate(e sidecar.Entry) {
	switch e.Msg {
	case "seeded key set from the refresh_token option":
		d.say(e.At, "sidecar", "stored the seed refresh token as key set %q, generation 1", e.String("key_set"))
	case sidecar.MsgRefreshing:
		d.say(e.At, "sidecar", "%s %q (generation %d): spending its refresh token at the token endpoint",
			sidecar.MsgRefreshing, e.String("key_set"), e.Int("generation"))
	case sidecar.MsgRefreshed:
		d.generation = e.Int("generation")
		took, _ := e.Fields["duration"].(float64) // seconds
		d.say(e.At, "sidecar", "%s %q: generation %d, refresh_token_rotated=%t, grant and durable write took %.1fms",
			sidecar.MsgRefreshed, e.String("key_set"), e.Int("generation"), e.Bool("refresh_token_rotated"), took*1000)
		d.say(e.At, "keystore", "rotation persisted: %s", d.storedKeySet())
	case sidecar.MsgReplaying:
		d.replays++
		d.say(e.At, "sidecar", "%s: the API answered %d to generation %d, replaying the same body with generation %d",
			sidecar.MsgReplaying, e.Int("rejected_status"), e.Int("rejected_generation"), e.Int("generation"))
	case sidecar.MsgFailed:
		d.say(e.At, "sidecar", "%s: %s", sidecar.MsgFailed, e.String("error_code"))
	}
}

// storedKeySet describes the stored document, without its token values.
func (d *demo) storedKeySet() string {
	path := filepath.Join(d.keystoreDir, keySetName+".json")
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	ks, err := keystore.JSONCodec{}.Decode(keySetName, data)
	if err != nil {
		return err.Error()
	}
	fields := make([]string, 0, len(ks.Token))
	for name := range ks.Token {
		fields = append(fields, name)
	}
	slices.Sort(fields)
	return fmt.Sprintf("%s holds generation %d (fields %s; the new refresh token is stored before it can be spent)",
		path, ks.Generation, strings.Join(fields, ", "))
}
