package bench

import (
	"context"
	"fmt"
	"time"
)

// UploadOptions shapes a burst of large uploads.
type UploadOptions struct {
	Uploads int   // at once, each on its own connection
	Size    int64 // bytes of generated body each
	// Chunked sends the bodies without a Content-Length. The handler then
	// cannot tell they are larger than max_replay_body before reading
	// them: it keeps replay_memory of each in memory and the rest in a
	// temporary file until the limit is passed, then drops the copy.
	Chunked bool
	OAuth2  bool // through oauth2_upstream, else bare reverse_proxy
	Timeout time.Duration
}

// UploadResult is what an upload burst measured.
type UploadResult struct {
	UploadOptions
	Burst    BurstResult
	StartRSS int64 // the fresh process's peak RSS before the uploads
	PeakRSS  int64 // its peak RSS (VmHWM) after them
}

// Uploads starts a fresh Caddy (so that its VmHWM is this burst's), sends
// opt.Uploads uploads of opt.Size bytes at once, and reads its peak RSS.
func (e *Env) Uploads(ctx context.Context, opt UploadOptions) (*UploadResult, error) {
	auth, name := "", "caddy-bare (uploads)"
	var oauth *OAuth2Options
	if opt.OAuth2 {
		auth, name = "Bearer "+benchAccessToken, "caddy-oauth2 (uploads)"
		keys, err := e.dir("uploads-keystore")
		if err != nil {
			return nil, err
		}
		// Nothing refreshes here; the endpoint is never asked.
		oauth = &OAuth2Options{TokenURL: "http://127.0.0.1:9/token", KeystoreDir: keys, Refresh: "proactive"}
		if err := SeedKeySet(keys, oauth.TokenURL, benchAccessToken, benchRefreshToken, time.Now().Add(24*time.Hour)); err != nil {
			return nil, fmt.Errorf("seeding key set: %w", err)
		}
	}
	up, err := StartUpstream(auth)
	if err != nil {
		return nil, err
	}
	defer up.Close()
	dir, err := e.dir("uploads-caddy")
	if err != nil {
		return nil, err
	}
	proc, err := StartCaddy(ctx, name, e.CaddyBin, dir, CaddySpec{Upstream: up.Addr, OAuth2: oauth})
	if err != nil {
		return nil, err
	}
	defer proc.Stop()

	res := &UploadResult{UploadOptions: opt}
	if res.StartRSS, err = proc.PeakRSS(); err != nil {
		return nil, err
	}
	req := Request{Method: "POST", Path: "/upload", BodySize: opt.Size, Chunked: opt.Chunked}
	if res.Burst, err = Burst(ctx, proc.Addr, req, opt.Uploads, opt.Timeout); err != nil {
		return nil, err
	}
	if res.PeakRSS, err = proc.PeakRSS(); err != nil {
		return nil, err
	}
	if n := up.Short.Load() + up.Rejected.Load(); n > 0 {
		return nil, fmt.Errorf("%s: %d uploads reached the upstream short or were rejected", name, n)
	}
	return res, nil
}
