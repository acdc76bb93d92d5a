// Package selfproxy refuses, when a config is loaded, a sidecar whose
// reverse_proxy would dial one of its own server's listeners: every request
// would come back to the oauth2_upstream handler, which injects the token
// again and proxies again.
package selfproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/proxyhops"
)

// A sidecar that serves the API's own host name (the connector's /etc/hosts points that name
// at the sidecar) proxies to itself when its upstream's name resolves through the same alias:
// every request comes back to this handler, which injects the token again and proxies again,
// until a limit or a timeout. Go's resolver reads /etc/hosts before DNS, whatever a
// net.Resolver's PreferGo and Dial say (net/conf.go lookupOrder: "files dns", from
// nsswitch.conf or without one; net/dnsclient_unix.go goLookupIPCNAMEOrder answers from the
// hosts file before any query), reverse_proxy's `resolver` option included: the alias wins
// unless the sidecar's own hosts file lacks it. The check below refuses such a
// configuration when it is loaded rather than when the first request loops.

// selfProxyLookupTimeout bounds the name lookups of the check, so that a DNS outage delays a
// config load by at most this much. An upstream whose name does not resolve in time is not
// judged: reverse_proxy could not dial it either.
const selfProxyLookupTimeout = 2 * time.Second

// Refuse returns an error when a reverse_proxy that runs after an oauth2_upstream
// handler, in the routes of the HTTP server being provisioned, would dial one of that
// server's own listeners. Upstreams are resolved as reverse_proxy's HTTP transport resolves
// them: its resolver when one is set, the system's otherwise. Upstreams with placeholders
// (known only per request), dynamic upstreams and upstreams reached through a forward proxy
// (the proxy resolves the name) are not judged.
func Refuse(ctx caddy.Context, logger *zap.Logger) error {
	srv, hops := proxyhops.OfServer(ctx)
	if len(hops) == 0 {
		return nil
	}
	lookupCtx, cancel := context.WithTimeout(ctx, selfProxyLookupTimeout)
	defer cancel()
	listeners := parseListeners(lookupCtx, srv.Listen)
	for _, hop := range hops {
		for _, upstream := range hop.Upstreams {
			if err := (proxyHop{hop}).refuseLoop(lookupCtx, upstream.Dial, listeners, logger); err != nil {
				return err
			}
		}
	}
	return nil
}

// proxyHop is a reverse_proxy the check judges.
type proxyHop struct{ proxyhops.Hop }

// ownListener is one listen address of the server, as reverse_proxy would meet it.
type ownListener struct {
	address   string // as configured, for messages
	network   string // "tcp" (tcp, tcp4, tcp6) or "unix"
	path      string // the socket of a unix listener
	wildcard  bool   // every interface
	ips       []net.IP
	low, high uint // port range
}

// parseListeners reads the server's listen addresses; a host name is resolved as net.Listen
// would. Networks that reverse_proxy cannot dial (fd, udp) are left out.
func parseListeners(ctx context.Context, listen []string) []ownListener {
	var listeners []ownListener
	for _, address := range listen {
		addr, err := caddy.ParseNetworkAddress(address)
		if err != nil {
			continue // the server refuses to start on it
		}
		l := ownListener{address: address, low: addr.StartPort, high: addr.EndPort}
		switch {
		case addr.IsUnixNetwork():
			l.network, l.path = "unix", strings.Split(addr.Host, "|")[0] // "|0600" is the socket's mode
		case strings.HasPrefix(addr.Network, "tcp"):
			l.network = "tcp"
			ip := net.ParseIP(addr.Host)
			switch {
			case addr.Host == "" || (ip != nil && ip.IsUnspecified()):
				l.wildcard = true
			case ip != nil:
				l.ips = []net.IP{ip}
			default:
				l.ips = lookupIPs(ctx, net.DefaultResolver, addr.Host)
			}
		default:
			continue
		}
		listeners = append(listeners, l)
	}
	return listeners
}

// refuseLoop returns an error when dial, one of the hop's upstream addresses, reaches one of
// listeners.
func (hop proxyHop) refuseLoop(ctx context.Context, dial string, listeners []ownListener, logger *zap.Logger) error {
	if strings.Contains(dial, "{") || (hop.Transport.Protocol != "" && hop.Transport.Protocol != "http") {
		return nil // resolved per request, or not HTTP (FastCGI cannot loop back into a handler)
	}
	addr, err := caddy.ParseNetworkAddress(dial)
	if err != nil || addr.PortRangeSize() != 1 {
		return nil // reverse_proxy refuses it itself
	}
	if addr.IsUnixNetwork() {
		for _, l := range listeners {
			if l.network == "unix" && l.path == strings.Split(addr.Host, "|")[0] {
				return selfProxyError(dial, addr.Host, l)
			}
		}
		return nil
	}
	if !strings.HasPrefix(addr.Network, "tcp") || hop.viaForwardProxy(addr) {
		return nil
	}
	ips := []net.IP{net.ParseIP(addr.Host)}
	if ips[0] == nil {
		resolver, err := hop.resolver()
		if err != nil {
			return nil // reverse_proxy refuses the transport itself
		}
		if ips = lookupIPs(ctx, resolver, addr.Host); len(ips) == 0 {
			logger.Debug("self-proxy check: the upstream's name did not resolve; not judged", zap.String("upstream", dial))
			return nil
		}
	}
	local := localIPs()
	for _, ip := range ips {
		for _, l := range listeners {
			if l.network == "tcp" && l.low <= addr.StartPort && addr.StartPort <= l.high && l.reaches(ip, local) {
				return selfProxyError(dial, net.JoinHostPort(ip.String(), strconv.Itoa(int(addr.StartPort))), l)
			}
		}
	}
	return nil
}

// reaches reports whether a connection to ip arrives at the listener (on its port).
// Dialing the unspecified address (0.0.0.0, ::) connects to this host, so it counts as
// every local address: it reaches every listener of the server, a specific one included.
func (l ownListener) reaches(ip net.IP, local []net.IP) bool {
	if ip.IsUnspecified() {
		return true
	}
	if l.wildcard {
		// The whole of 127.0.0.0/8 is this host's.
		return ip.IsLoopback() || slices.ContainsFunc(local, ip.Equal)
	}
	return slices.ContainsFunc(l.ips, ip.Equal)
}

func selfProxyError(dial, reached string, l ownListener) error {
	return fmt.Errorf("reverse_proxy upstream %q would proxy to itself: it dials %s, which is this server's own listener %q, "+
		"so every request would come back to oauth2_upstream instead of reaching the API. "+
		"The upstream's name must not resolve through the alias that points the connector at the sidecar "+
		"(hostAliases, /etc/hosts: Go reads the hosts file before DNS, reverse_proxy's resolver option included): "+
		"give the sidecar a hosts file without it, or give the upstream by address with tls_server_name "+
		"(README, \"Connectors that cannot change their base URL\")", dial, reached, l.address)
}

// viaForwardProxy reports whether the transport sends requests for addr through a forward
// proxy (its network_proxy, or HTTP(S)_PROXY from the environment, as the transport's default
// http.ProxyFromEnvironment reads it): the proxy, not this host, then resolves the name.
func (hop proxyHop) viaForwardProxy(addr caddy.NetworkAddress) bool {
	t := hop.Transport
	if t.ForwardProxyURL != "" {
		return true
	}
	if len(t.NetworkProxy) > 0 {
		var proxy struct {
			From string `json:"from"`
		}
		return json.Unmarshal(t.NetworkProxy, &proxy) != nil || proxy.From != "none"
	}
	scheme := "http"
	if len(t.TLS) > 0 {
		scheme = "https"
	}
	proxyURL, err := http.ProxyFromEnvironment(&http.Request{URL: &url.URL{Scheme: scheme, Host: addr.JoinHostPort(0)}})
	return err == nil && proxyURL != nil
}

// resolver returns the resolver that reverse_proxy's HTTP transport dials with: like
// reverseproxy.HTTPTransport.NewTransport, the Go resolver asking one of the configured
// servers, or the system's without any.
func (hop proxyHop) resolver() (*net.Resolver, error) {
	configured := hop.Transport.Resolver
	if configured == nil || len(configured.Addresses) == 0 {
		return net.DefaultResolver, nil
	}
	var servers []caddy.NetworkAddress
	for _, address := range configured.Addresses {
		server, err := caddy.ParseNetworkAddressWithDefaults(address, "udp", 53)
		if err != nil || server.PortRangeSize() != 1 {
			return nil, fmt.Errorf("resolver address %q", address)
		}
		servers = append(servers, server)
	}
	var dialer net.Dialer
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			server := servers[rand.IntN(len(servers))]
			return dialer.DialContext(ctx, server.Network, server.JoinHostPort(0))
		},
	}, nil
}

// lookupIPs resolves host with resolver, nil when it does not resolve.
func lookupIPs(ctx context.Context, resolver *net.Resolver, host string) []net.IP {
	addrs, err := resolver.LookupIPAddr(ctx, host)
	if err != nil {
		return nil
	}
	ips := make([]net.IP, len(addrs))
	for i, a := range addrs {
		ips[i] = a.IP
	}
	return ips
}

// localIPs returns the addresses of this host's interfaces, which a wildcard listener serves.
func localIPs() []net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var ips []net.IP
	for _, a := range addrs {
		if ipNet, ok := a.(*net.IPNet); ok {
			ips = append(ips, ipNet.IP)
		}
	}
	return ips
}
