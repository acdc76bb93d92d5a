package keystores

import (
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/caddyfileopt"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/redis"
)

func init() {
	caddy.RegisterModule(RedisKeystore{})
}

// RedisKeystore keeps key set documents in Redis, so that replicas share
// them, and lets one replica of the cluster refresh a key set at a time.
// Keys and their layout are described on redis.Store.
//
// The refresh lock is a lease that its holder renews while it holds it, so
// a slow grant keeps it; a replica that dies or loses Redis stops renewing,
// and its lock expires after LockTTL, so it cannot block the others for
// long. If such a holder was alive after all, the generation check keeps
// its late write from replacing the newer key set. Durability is Redis's:
// enable AOF (appendfsync everysec or always) so that a rotated refresh
// token survives a Redis restart.
type RedisKeystore struct {
	// Addresses are the host:port addresses of Redis. One address is a
	// single server; several are the seed nodes of a Redis Cluster; with
	// MasterName they are the Sentinels instead. Placeholders such as
	// {env.REDIS_ADDRESS} are replaced when the module is provisioned.
	// Default: 127.0.0.1:6379.
	Addresses []string `json:"addresses,omitempty"`

	// Username is the ACL user to authenticate as (Redis 6 and later).
	// Placeholders are replaced when the module is provisioned. Default:
	// none, which authenticates as the default user when Password is set.
	Username string `json:"username,omitempty"`

	// Password authenticates to Redis. Use a placeholder such as
	// {env.REDIS_PASSWORD} to keep it out of the configuration; it is
	// replaced when the module is provisioned. Default: none.
	Password string `json:"password,omitempty"`

	// DB is the number of the logical database to use. Redis Cluster only
	// has database 0. Default: 0.
	DB int `json:"db,omitempty"`

	// KeyPrefix starts the name of every key this store writes, so that
	// several deployments can share one Redis. Default: "oauth2_upstream:".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// MasterName is the name of the master that the Sentinels at
	// Addresses monitor. Setting it selects Redis Sentinel. Default: none.
	MasterName string `json:"master_name,omitempty"`

	// TLS connects to Redis over TLS, verifying its certificate against
	// the system's roots. Default: false.
	TLS bool `json:"tls,omitempty"`

	// TLSServerName is the name to verify the server's certificate
	// against, when it is not the host of the address. Setting it implies
	// TLS. Default: the host of each address.
	TLSServerName string `json:"tls_server_name,omitempty"`

	// LockTTL is how long a refresh lock lasts once its holder stops
	// renewing it; while it holds the lock, the holder renews it every
	// LockTTL/3. It must be at least the handler's token_timeout plus 5s,
	// so that a holder that cannot reach Redis to renew still finishes its
	// token request before another replica can start one. Default: 30s.
	LockTTL caddy.Duration `json:"lock_ttl,omitempty"`

	// LockWait is the longest a replica waits for another replica's
	// refresh lock before giving up with an error (the request then fails
	// with 503). Default: 10s.
	LockWait caddy.Duration `json:"lock_wait,omitempty"`

	// DialTimeout bounds connecting to Redis. Default: 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// ReadTimeout bounds waiting for one reply from Redis, and writing
	// one command. Default: 3s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`

	// Store is the store, made by Provision and closed by Cleanup.
	*redis.Store `json:"-"`
}

// CaddyModule returns the Caddy module information.
func (RedisKeystore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oauth2_upstream.keystores.redis",
		New: func() caddy.Module { return new(RedisKeystore) },
	}
}

// Provision implements caddy.Provisioner: it applies the defaults, checks the
// configuration and makes the client. It connects lazily: Redis being down
// at startup fails requests, not the configuration load.
//
// Placeholders are replaced into the client's options only, never written
// back into the configuration, so that it keeps showing {env.REDIS_PASSWORD}
// rather than the password.
func (r *RedisKeystore) Provision(caddy.Context) error {
	repl := caddy.NewReplacer()
	addresses := make([]string, 0, len(r.Addresses))
	for _, a := range r.Addresses {
		addresses = append(addresses, repl.ReplaceKnown(a, ""))
	}
	opts := redis.Options{
		Addresses:     addresses,
		Username:      repl.ReplaceKnown(r.Username, ""),
		Password:      repl.ReplaceKnown(r.Password, ""),
		DB:            r.DB,
		KeyPrefix:     r.KeyPrefix,
		MasterName:    r.MasterName,
		TLS:           r.TLS,
		TLSServerName: r.TLSServerName,
		LockTTL:       time.Duration(r.LockTTL),
		LockWait:      time.Duration(r.LockWait),
		DialTimeout:   time.Duration(r.DialTimeout),
		ReadTimeout:   time.Duration(r.ReadTimeout),
	}.WithDefaults()
	r.KeyPrefix = opts.KeyPrefix
	r.LockTTL = caddy.Duration(opts.LockTTL)
	r.LockWait = caddy.Duration(opts.LockWait)
	r.DialTimeout = caddy.Duration(opts.DialTimeout)
	r.ReadTimeout = caddy.Duration(opts.ReadTimeout)

	store, err := redis.New(opts)
	if err != nil {
		return err
	}
	r.Store = store
	return nil
}

// Cleanup implements caddy.CleanerUpper: it closes the connections.
func (r *RedisKeystore) Cleanup() error {
	if r.Store == nil {
		return nil
	}
	return r.Store.Close()
}

// LockLease is how long a refresh lock lasts when its holder cannot renew
// it: LockTTL, with its default applied by Provision.
func (r *RedisKeystore) LockLease() time.Duration { return time.Duration(r.LockTTL) }

// UnmarshalCaddyfile sets up the store from Caddyfile tokens. Syntax:
//
//	keystore redis [<address>...] {
//		address     <host:port>...   # several: Cluster, or Sentinels with master_name
//		username    <user>
//		password    <password>       # e.g. {env.REDIS_PASSWORD}
//		db          <number>
//		key_prefix  <prefix>
//		master_name <name>
//		tls         [<server_name>]
//		lock_ttl    <duration>
//		lock_wait   <duration>
//		dial_timeout <duration>
//		read_timeout <duration>
//	}
func (r *RedisKeystore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the backend name
	r.Addresses = append(r.Addresses, d.RemainingArgs()...)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := r.unmarshalOption(d); err != nil {
			return err
		}
	}
	return nil
}

// unmarshalOption reads the option of the block that d is at, with its
// arguments.
func (r *RedisKeystore) unmarshalOption(d *caddyfile.Dispenser) error {
	switch option := d.Val(); option {
	case "address":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		r.Addresses = append(r.Addresses, args...)
	case "username":
		if !d.AllArgs(&r.Username) {
			return d.ArgErr()
		}
	case "password":
		if !d.AllArgs(&r.Password) {
			return d.ArgErr()
		}
	case "key_prefix":
		if !d.AllArgs(&r.KeyPrefix) {
			return d.ArgErr()
		}
	case "master_name":
		if !d.AllArgs(&r.MasterName) {
			return d.ArgErr()
		}
	case "db":
		var db string
		if !d.AllArgs(&db) {
			return d.ArgErr()
		}
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return d.Errf("db must be a database number, got %q", db)
		}
		r.DB = n
	case "tls":
		r.TLS = true
		if d.NextArg() {
			r.TLSServerName = d.Val()
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	case "lock_ttl":
		return caddyfileopt.Duration(d, &r.LockTTL, true)
	case "lock_wait":
		return caddyfileopt.Duration(d, &r.LockWait, true)
	case "dial_timeout":
		return caddyfileopt.Duration(d, &r.DialTimeout, true)
	case "read_timeout":
		return caddyfileopt.Duration(d, &r.ReadTimeout, true)
	default:
		return d.Errf("unrecognized keystore redis option %q", option)
	}
	return nil
}

// Interface guards: the handler asserts keystore.Store on the loaded
// module, UseCodec for encryption_key, and LockLease to check
// token_timeout.
var (
	_ keystore.Store        = (*RedisKeystore)(nil)
	_ keystore.CodecSetter  = (*RedisKeystore)(nil)
	_ keystore.LockLeaser   = (*RedisKeystore)(nil)
	_ caddy.Provisioner     = (*RedisKeystore)(nil)
	_ caddy.CleanerUpper    = (*RedisKeystore)(nil)
	_ caddyfile.Unmarshaler = (*RedisKeystore)(nil)
)
