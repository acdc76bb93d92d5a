package oauth2upstream

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/caddystorage"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/redis"
)

func init() {
	caddy.RegisterModule(FileKeystore{})
	caddy.RegisterModule(RedisKeystore{})
	caddy.RegisterModule(CaddyStorageKeystore{})
}

// FileKeystore is the default keystore: one JSON document per key set in a
// directory, written atomically and durably (temporary file, fsync, rename,
// fsync of the directory), files 0600 in a 0700 directory. Processes sharing
// the directory coordinate through flock(2) lock files beside the documents.
type FileKeystore struct {
	// Path is the directory that holds the documents, created 0700 if
	// missing (and tightened to 0700 if it exists). Default: the
	// "oauth2_upstream" folder in Caddy's data directory.
	Path string `json:"path,omitempty"`

	// Store is the store in Path, opened by Provision.
	*file.Store `json:"-"`
}

// CaddyModule returns the Caddy module information.
func (FileKeystore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oauth2_upstream.keystores.file",
		New: func() caddy.Module { return new(FileKeystore) },
	}
}

// Provision implements caddy.Provisioner: it opens the directory, creating
// it if needed.
func (f *FileKeystore) Provision(caddy.Context) error {
	if f.Path == "" {
		f.Path = filepath.Join(caddy.AppDataDir(), "oauth2_upstream")
	}
	store, err := file.New(f.Path)
	if err != nil {
		return err
	}
	f.Store = store
	return nil
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

// lockLeaseMargin is how much longer than token_timeout a refresh lock must
// last without renewal. Besides the token request, its holder re-reads the
// key set before it and saves the result after it: one keystore round trip
// each, milliseconds normally, with room here for a slow Redis.
const lockLeaseMargin = 5 * time.Second

// LockLease is how long a refresh lock lasts when its holder cannot renew
// it: LockTTL, with its default applied by Provision.
func (r *RedisKeystore) LockLease() time.Duration { return time.Duration(r.LockTTL) }

// checkLockLease refuses a keystore whose refresh locks, left unrenewed,
// could expire during one token request of at most tokenTimeout: a holder
// cut off from Redis would still be granting when another replica takes
// the lock and grants too, spending a rotating refresh token twice
// (invariant 4). Keystores whose locks do not expire pass.
func checkLockLease(store keystore.Store, tokenTimeout time.Duration) error {
	lease, ok := store.(keystore.LockLeaser)
	if !ok {
		return nil
	}
	if ttl, need := lease.LockLease(), tokenTimeout+lockLeaseMargin; ttl < need {
		return fmt.Errorf("keystore lock_ttl %v: must be at least token_timeout %v plus %v, so that a refresh lock that cannot be renewed outlasts a token request",
			ttl, tokenTimeout, lockLeaseMargin)
	}
	return nil
}

// CaddyStorageKeystore keeps key set documents in the storage Caddy is
// configured with (the global "storage" option: the file system by default,
// or a shared backend such as Redis, Consul or S3 that a cluster of Caddy
// instances already uses for certificates). Documents live under
// oauth2_upstream/<name>.json.
//
// Coordination uses the storage's own locks, built for certificate renewals:
// they may go stale (the file storage's after a few seconds without its
// holder's heartbeat) and are polled (each second, for the file storage).
// The generation check still fences a holder whose lock went stale, but a
// storage whose writes are not atomic or whose locks do not exclude can lose
// a rotated refresh token; prefer the file or redis keystore where they fit.
type CaddyStorageKeystore struct {
	// Store is the store over Caddy's storage, made by Provision.
	*caddystorage.Store `json:"-"`
}

// CaddyModule returns the Caddy module information.
func (CaddyStorageKeystore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oauth2_upstream.keystores.caddy_storage",
		New: func() caddy.Module { return new(CaddyStorageKeystore) },
	}
}

// Provision implements caddy.Provisioner: it takes the storage of ctx, the
// one Caddy is configured with.
func (s *CaddyStorageKeystore) Provision(ctx caddy.Context) error {
	storage := ctx.Storage()
	if storage == nil {
		return errors.New("caddy_storage keystore: Caddy has no storage configured")
	}
	s.Store = caddystorage.New(storage)
	return nil
}

// Interface guards: the handler asserts keystore.Store on the loaded module,
// keystore.CodecSetter for encryption_key, and keystore.LockLeaser to check
// token_timeout.
var (
	_ keystore.Store       = (*FileKeystore)(nil)
	_ keystore.CodecSetter = (*FileKeystore)(nil)
	_ caddy.Provisioner    = (*FileKeystore)(nil)

	_ keystore.Store       = (*RedisKeystore)(nil)
	_ keystore.CodecSetter = (*RedisKeystore)(nil)
	_ caddy.Provisioner    = (*RedisKeystore)(nil)
	_ caddy.CleanerUpper   = (*RedisKeystore)(nil)
	_ keystore.LockLeaser  = (*RedisKeystore)(nil)

	_ keystore.Store       = (*CaddyStorageKeystore)(nil)
	_ keystore.CodecSetter = (*CaddyStorageKeystore)(nil)
	_ caddy.Provisioner    = (*CaddyStorageKeystore)(nil)
)
