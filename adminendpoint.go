package oauth2upstream

import (
	"errors"
	"fmt"
	"reflect"

	"github.com/caddyserver/caddy/v2"
)

// refuseAdminOnTCP refuses a config whose admin endpoint listens on TCP,
// given or by default (Caddy's is localhost:2019), unless AllowAdminTCP
// says the operator means it: every process that reaches a TCP port of the
// host (every container of a pod shares its loopback) could PUT a key set
// there and have its own token sent with the next request, or load a
// config that prints the secrets (DESIGN.md invariant 11). A unix socket,
// whose file mode says who may connect, or "admin off" passes.
func (h *Handler) refuseAdminOnTCP(ctx caddy.Context) error {
	if h.AllowAdminTCP {
		return nil
	}
	listen, given, err := adminListen(ctx)
	if err != nil {
		return fmt.Errorf("checking where the admin endpoint listens: %w; set allow_admin_tcp if it may listen on TCP", err)
	}
	if listen == "" {
		return nil // no admin endpoint
	}
	addr, err := caddy.ParseNetworkAddress(caddy.NewReplacer().ReplaceAll(listen, ""))
	if err == nil && addr.IsUnixNetwork() {
		return nil
	}
	why := "is given as " + listen
	if !given {
		why = "is Caddy's default, " + listen + ", since no admin option is given"
	}
	return fmt.Errorf("the admin endpoint %s, which any process that reaches the host's ports can use to replace key sets "+
		"(their tokens would then go to the upstream) or read the configuration: give it a unix socket "+
		"(Caddyfile: admin unix//run/oauth2-upstream/admin.sock|0600), turn it off (admin off), "+
		"or set allow_admin_tcp if every process that can reach it is trusted", why)
}

// adminListen returns the address the admin endpoint of the config that
// ctx provisions listens on ("" when it is disabled or ctx provisions no
// config, such as a context a program made itself), and whether the config
// gives it or it is Caddy's default. Caddy offers modules no accessor for
// the config they are loaded from, so it is read from the context's
// unexported config by reflection; TestAdminListenReadsTheConfig pins this
// to the Caddy release in go.mod, and a context whose shape is not the
// expected one is an error, not a pass.
func adminListen(ctx caddy.Context) (listen string, given bool, err error) {
	cfg := reflect.ValueOf(ctx).FieldByName("cfg")
	if !cfg.IsValid() || cfg.Kind() != reflect.Pointer || cfg.Type().Elem() != reflect.TypeFor[caddy.Config]() {
		return "", false, errors.New("this Caddy's context holds no *caddy.Config named cfg")
	}
	if cfg.IsNil() {
		return "", false, nil
	}
	admin := cfg.Elem().FieldByName("Admin")
	if admin.IsNil() {
		return caddy.DefaultAdminListen, false, nil
	}
	if admin.Elem().FieldByName("Disabled").Bool() {
		return "", true, nil
	}
	if listen := admin.Elem().FieldByName("Listen").String(); listen != "" {
		return listen, true, nil
	}
	return caddy.DefaultAdminListen, false, nil
}
