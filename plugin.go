package oauth2upstream

// The module's other families, each a package of its own, come with the
// handler: `xcaddy build --with` this module's path brings every one.
import (
	_ "github.com/oauth2upstream/caddy-oauth2-upstream/admin"     // admin API, CLI, health route
	_ "github.com/oauth2upstream/caddy-oauth2-upstream/connect"   // connect page and its admin route
	_ "github.com/oauth2upstream/caddy-oauth2-upstream/keystores" // file, redis and caddy_storage keystores
)
