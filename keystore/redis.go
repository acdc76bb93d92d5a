package keystore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

func init() {
	caddy.RegisterModule(Redis{})
}

// Defaults of the Redis keystore.
const (
	defaultRedisAddress     = "127.0.0.1:6379"
	defaultRedisKeyPrefix   = "oauth2_upstream:"
	defaultRedisLockTTL     = 30 * time.Second
	defaultRedisLockWait    = 10 * time.Second
	defaultRedisDialTimeout = 5 * time.Second
	defaultRedisReadTimeout = 3 * time.Second
)

// Bounds of the pause between two tries of a held lock. Refreshes take a
// token request's round trip, so polling faster only loads Redis.
const (
	lockRetryMin = 5 * time.Millisecond
	lockRetryMax = 100 * time.Millisecond
)

// Redis keeps key set documents in Redis, so that replicas share them, and
// lets one replica of the cluster refresh a key set at a time (invariant 4).
//
// Each key set is a hash <key_prefix>keyset:<name> with the fields
// "generation" (in clear, for the compare-and-swap) and "document" (what the
// codec made, perhaps encrypted). Save is a Lua script that writes only when
// the stored generation is the one the new document follows. The refresh
// lock is <key_prefix>lock:<name>, taken with SET NX PX and a random value,
// released by a script that deletes it only while it still holds that value.
//
// The lock expires after LockTTL, so a crashed replica cannot block the
// others for long; a holder that stalls past it may find another holder in,
// and the generation check keeps its late write from replacing the newer
// key set. Durability is Redis's: enable AOF (appendfsync everysec or always)
// so that a rotated refresh token survives a Redis restart.
type Redis struct {
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

	// LockTTL is how long a refresh lock lasts when its holder neither
	// releases it nor dies cleanly. It must be longer than a token
	// request can take (its timeout), or a slow refresh loses its lock to
	// another replica, which then also refreshes. Default: 30s.
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

	codec  Codec
	client redis.UniversalClient
}

// CaddyModule returns the Caddy module information.
func (Redis) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oauth2_upstream.keystores.redis",
		New: func() caddy.Module { return new(Redis) },
	}
}

// Provision implements caddy.Provisioner. It connects lazily: Redis being
// down at startup fails requests, not the configuration load.
func (r *Redis) Provision(caddy.Context) error {
	return r.open()
}

// open applies the defaults, checks the configuration and makes the client.
// Secrets are replaced into the client's options only, never written back
// into the configuration, which Caddy's admin API serves.
func (r *Redis) open() error {
	if r.codec == nil {
		r.codec = JSONCodec{}
	}
	if r.KeyPrefix == "" {
		r.KeyPrefix = defaultRedisKeyPrefix
	}
	setDefaultDuration(&r.LockTTL, defaultRedisLockTTL)
	setDefaultDuration(&r.LockWait, defaultRedisLockWait)
	setDefaultDuration(&r.DialTimeout, defaultRedisDialTimeout)
	setDefaultDuration(&r.ReadTimeout, defaultRedisReadTimeout)
	if r.LockTTL < 0 || r.LockWait < 0 || r.DialTimeout < 0 || r.ReadTimeout < 0 {
		return errors.New("redis keystore: lock_ttl, lock_wait, dial_timeout and read_timeout must not be negative")
	}
	if r.DB < 0 {
		return fmt.Errorf("redis keystore: db %d must not be negative", r.DB)
	}

	repl := caddy.NewReplacer()
	addrs := make([]string, 0, len(r.Addresses))
	for _, a := range r.Addresses {
		addrs = append(addrs, repl.ReplaceKnown(a, ""))
	}
	if len(addrs) == 0 {
		addrs = []string{defaultRedisAddress}
	}
	if len(addrs) > 1 && r.MasterName == "" && r.DB != 0 {
		return fmt.Errorf("redis keystore: db %d is set, but several addresses mean a Redis Cluster, which only has database 0", r.DB)
	}
	opts := &redis.UniversalOptions{
		Addrs:        addrs,
		Username:     repl.ReplaceKnown(r.Username, ""),
		Password:     repl.ReplaceKnown(r.Password, ""),
		DB:           r.DB,
		MasterName:   r.MasterName,
		DialTimeout:  time.Duration(r.DialTimeout),
		ReadTimeout:  time.Duration(r.ReadTimeout),
		WriteTimeout: time.Duration(r.ReadTimeout),
		// A caller's deadline (the request's, or LockWait) also bounds
		// the network round trips.
		ContextTimeoutEnabled: true,
		// Older and managed servers refuse these handshakes; the store
		// needs neither.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if r.TLS || r.TLSServerName != "" {
		opts.TLSConfig = &tls.Config{ServerName: r.TLSServerName, MinVersion: tls.VersionTLS12}
	}
	r.client = redis.NewUniversalClient(opts)
	return nil
}

func setDefaultDuration(d *caddy.Duration, def time.Duration) {
	if *d == 0 {
		*d = caddy.Duration(def)
	}
}

// UseCodec sets how documents are encoded at rest (plain JSON by default).
func (r *Redis) UseCodec(c Codec) { r.codec = c }

// Cleanup implements caddy.CleanerUpper: it closes the connections.
func (r *Redis) Cleanup() error {
	if r.client == nil {
		return nil
	}
	return r.client.Close()
}

// Key names. Key set names cannot hold a ':', so a document key never
// collides with a lock key, whatever the name.
func (r *Redis) documentKey(name string) string { return r.KeyPrefix + "keyset:" + name }
func (r *Redis) lockKey(name string) string     { return r.KeyPrefix + "lock:" + name }

// Load implements Store.
func (r *Redis) Load(ctx context.Context, name string) (*KeySet, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	fields, err := r.client.HMGet(ctx, r.documentKey(name), "generation", "document").Result()
	if err != nil {
		return nil, fmt.Errorf("loading key set %q from redis: %w", name, err)
	}
	generation, _ := fields[0].(string)
	document, ok := fields[1].(string)
	if !ok {
		return nil, fmt.Errorf("loading key set %q from redis: %w", name, ErrNotFound)
	}
	ks, err := r.codec.Decode(name, []byte(document))
	if err != nil {
		return nil, err
	}
	// The clear generation decides Save's compare-and-swap; it must be
	// the document's, or a writer could be fenced by a number it never saw.
	if generation != strconv.FormatInt(ks.Generation, 10) {
		return nil, fmt.Errorf("%w: key set %q is stored as generation %q, its document says %d", ErrCorrupt, name, generation, ks.Generation)
	}
	return ks, nil
}

// saveScript stores a document when the stored generation (none counting as
// "0") is the one it follows. Generations are compared as the decimal text
// Save writes, which Lua's doubles cannot round. A retried call finding its
// own document already stored succeeds, so a lost reply does not turn into
// a false conflict.
//
// KEYS[1] document key; ARGV[1] new generation; ARGV[2] generation it
// follows; ARGV[3] encoded document. Returns {stored, stored generation}.
var saveScript = redis.NewScript(`
local stored = redis.call("HMGET", KEYS[1], "generation", "document")
local have = stored[1] or "0"
if have == ARGV[1] and stored[2] == ARGV[3] then
	return {1, have}
end
if have ~= ARGV[2] then
	return {0, have}
end
redis.call("HSET", KEYS[1], "generation", ARGV[1], "document", ARGV[3])
return {1, have}
`)

// Save implements Store with saveScript, so the check and the write are one
// atomic step in Redis.
func (r *Redis) Save(ctx context.Context, ks *KeySet) error {
	if err := ValidateName(ks.Name); err != nil {
		return err
	}
	data, err := r.codec.Encode(ks)
	if err != nil {
		return err
	}
	gen := strconv.FormatInt(ks.Generation, 10)
	follows := strconv.FormatInt(ks.Generation-1, 10)
	reply, err := saveScript.Run(ctx, r.client, []string{r.documentKey(ks.Name)}, gen, follows, data).Slice()
	if err != nil {
		return fmt.Errorf("saving key set %q to redis: %w", ks.Name, err)
	}
	if len(reply) != 2 {
		return fmt.Errorf("saving key set %q to redis: unexpected script reply of %d values", ks.Name, len(reply))
	}
	if stored, _ := reply[0].(int64); stored != 1 {
		return fmt.Errorf("saving key set %q generation %d over stored generation %v: %w", ks.Name, ks.Generation, reply[1], ErrConflict)
	}
	return nil
}

// unlockScript deletes the lock only while it holds the caller's value: a
// holder whose lock expired must not release its successor's.
var unlockScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0
`)

// Lock implements Store. It tries SET NX PX, pausing between tries from
// lockRetryMin doubling up to lockRetryMax, until it gets the lock, ctx
// ends, or LockWait has passed.
func (r *Redis) Lock(ctx context.Context, name string) (func() error, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	key, value := r.lockKey(name), rand.Text()
	wait, cancel := context.WithTimeout(ctx, time.Duration(r.LockWait))
	defer cancel()
	pause := lockRetryMin
	for {
		ok, err := r.client.SetNX(wait, key, value, time.Duration(r.LockTTL)).Result()
		if ok && err == nil {
			return r.unlocker(ctx, name, key, value), nil
		}
		if err != nil && wait.Err() == nil {
			return nil, fmt.Errorf("locking key set %q in redis: %w", name, err)
		}
		if err != nil {
			// The SET may have landed before the deadline cut the
			// reply off: release it, or it blocks everyone for LockTTL.
			r.release(ctx, key, value)
		}
		timer := time.NewTimer(pause)
		select {
		case <-wait.Done():
			timer.Stop()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for the refresh lock of key set %q: %w", name, ctx.Err())
			}
			return nil, fmt.Errorf("waiting for the refresh lock of key set %q: another replica held it longer than lock_wait %v: %w", name, time.Duration(r.LockWait), wait.Err())
		case <-timer.C:
		}
		pause = min(2*pause, lockRetryMax)
	}
}

// unlocker returns the unlock function of a lock holding value. Calling it
// more than once releases once and repeats the first answer.
func (r *Redis) unlocker(ctx context.Context, name, key, value string) func() error {
	var (
		once sync.Once
		err  error
	)
	return func() error {
		once.Do(func() {
			var released bool
			released, err = r.release(ctx, key, value)
			switch {
			case err != nil:
				err = fmt.Errorf("releasing the refresh lock of key set %q: %w", name, err)
			case !released:
				err = fmt.Errorf("releasing the refresh lock of key set %q: it had expired (lock_ttl %v) and may have passed to another holder", name, time.Duration(r.LockTTL))
			}
		})
		return err
	}
}

// release deletes the lock if it still holds value. It runs even when the
// lock's context has ended (the request finished or was cancelled), for at
// most ReadTimeout.
func (r *Redis) release(ctx context.Context, key, value string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(r.ReadTimeout))
	defer cancel()
	n, err := unlockScript.Run(ctx, r.client, []string{key}, value).Int64()
	return n == 1, err
}

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
func (r *Redis) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the backend name
	r.Addresses = append(r.Addresses, d.RemainingArgs()...)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "address":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			r.Addresses = append(r.Addresses, args...)
		case "username":
			if err := oneArg(d, &r.Username); err != nil {
				return err
			}
		case "password":
			if err := oneArg(d, &r.Password); err != nil {
				return err
			}
		case "key_prefix":
			if err := oneArg(d, &r.KeyPrefix); err != nil {
				return err
			}
		case "master_name":
			if err := oneArg(d, &r.MasterName); err != nil {
				return err
			}
		case "db":
			var db string
			if err := oneArg(d, &db); err != nil {
				return err
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
		case "lock_ttl", "lock_wait", "dial_timeout", "read_timeout":
			if err := r.unmarshalDuration(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized keystore redis option %q", d.Val())
		}
	}
	return nil
}

func (r *Redis) unmarshalDuration(d *caddyfile.Dispenser) error {
	option := d.Val()
	var text string
	if err := oneArg(d, &text); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(text)
	if err != nil || dur <= 0 {
		return d.Errf("%s must be a positive duration, got %q", option, text)
	}
	target := map[string]*caddy.Duration{
		"lock_ttl":     &r.LockTTL,
		"lock_wait":    &r.LockWait,
		"dial_timeout": &r.DialTimeout,
		"read_timeout": &r.ReadTimeout,
	}[option]
	*target = caddy.Duration(dur)
	return nil
}

// oneArg reads the single argument of the current option into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ Store                 = (*Redis)(nil)
	_ caddy.Provisioner     = (*Redis)(nil)
	_ caddy.CleanerUpper    = (*Redis)(nil)
	_ caddyfile.Unmarshaler = (*Redis)(nil)
)
