package credential

import (
	"fmt"
	"net"
	"net/url"
)

// CheckSecretsURL checks a URL that secrets are sent to (the token endpoint,
// a notify receiver): absolute http(s), no credentials of its own, and https
// unless its host is loopback or allowHTTP (whose option is named by
// allowedBy) permits plain http. option names the setting in errors; why
// says what would cross the network in clear.
func CheckSecretsURL(option, raw string, allowHTTP bool, why, allowedBy string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("%s %q: must be an absolute http(s) URL", option, raw)
	}
	if u.User != nil {
		return fmt.Errorf("%s: must not carry credentials", option)
	}
	if u.Scheme == "http" && !allowHTTP && !isLoopback(u.Hostname()) {
		unless := "its host is loopback"
		if allowedBy != "" {
			unless += " or " + allowedBy
		}
		return fmt.Errorf("%s %q: must be https (%s) unless %s", option, raw, why, unless)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
