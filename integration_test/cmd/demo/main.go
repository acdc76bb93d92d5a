// Command demo shows the sidecar's main job on one machine, without any
// provider account: it starts a real OAuth2 authorization server (fosite,
// rotating refresh tokens with reuse detection, short-lived access tokens
// and no expires_in, so that only a 401 tells a client its token died), an
// API that accepts only active tokens, this repository's Caddy with the
// oauth2_upstream sidecar in front of it, and a "legacy client" that sends
// requests with no credentials at all. As it happens, it prints each
// request, the API's 401, the sidecar's refresh, the rotated key set it
// persisted, the replay, and the client's answer.
//
//	cd integration_test && go run ./cmd/demo [-duration 20s]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	cfg := defaultConfig()
	flag.DurationVar(&cfg.duration, "duration", cfg.duration, "how long the legacy client sends requests")
	flag.DurationVar(&cfg.interval, "interval", cfg.interval, "pause between two client requests")
	flag.DurationVar(&cfg.lifespan, "lifespan", cfg.lifespan, "access token lifespan at the authorization server")
	flag.StringVar(&cfg.repo, "repo", "", "repository root to build ./cmd/caddy from (default: found with go list)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	duration time.Duration
	interval time.Duration
	lifespan time.Duration
	repo     string
}

func defaultConfig() config {
	return config{duration: 20 * time.Second, interval: 500 * time.Millisecond, lifespan: 3 * time.Second}
}
