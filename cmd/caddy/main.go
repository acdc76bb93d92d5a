// Command caddy is Caddy with its standard modules and oauth2_upstream, the
// binary the Dockerfile ships and the end-to-end tests run.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/oauth2upstream/caddy-oauth2-upstream"
)

func main() {
	caddycmd.Main()
}
