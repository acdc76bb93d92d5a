// Package redis keeps key set documents in Redis (a single server, Sentinel
// or Cluster), so that replicas share them, and lets one replica refresh a
// key set at a time through a refresh lock that its holder renews as a
// lease.
package redis

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Defaults of the Redis keystore, applied by Options.WithDefaults.
const (
	defaultAddress     = "127.0.0.1:6379"
	defaultKeyPrefix   = "oauth2_upstream:"
	defaultLockTTL     = 30 * time.Second
	defaultLockWait    = 10 * time.Second
	defaultDialTimeout = 5 * time.Second
	defaultReadTimeout = 3 * time.Second
)

// Options configures a Store. Every value is used as it is:
// resolving placeholders or environment variables is the caller's job.
type Options struct {
	// Addresses are the host:port addresses of Redis. One address is a
	// single server; several are the seed nodes of a Redis Cluster; with
	// MasterName they are the Sentinels instead. Default: 127.0.0.1:6379.
	Addresses []string

	// Username is the ACL user to authenticate as (Redis 6 and later).
	// Default: none, which authenticates as the default user when
	// Password is set.
	Username string

	// Password authenticates to Redis. Default: none.
	Password string

	// DB is the number of the logical database to use. Redis Cluster only
	// has database 0. Default: 0.
	DB int

	// KeyPrefix starts the name of every key the store writes, so that
	// several deployments can share one Redis. Default: "oauth2_upstream:".
	KeyPrefix string

	// MasterName is the name of the master that the Sentinels at
	// Addresses monitor. Setting it selects Redis Sentinel. Default: none.
	MasterName string

	// TLS connects to Redis over TLS, verifying its certificate against
	// the system's roots. Default: false.
	TLS bool

	// TLSServerName is the name to verify the server's certificate
	// against, when it is not the host of the address. Setting it implies
	// TLS. Default: the host of each address.
	TLSServerName string

	// LockTTL is how long a refresh lock lasts once its holder stops
	// renewing it: the holder renews it every LockTTL/3 while it holds it,
	// so a replica that dies or cannot reach Redis blocks the others for at
	// most LockTTL. It must be longer than a token request can take, so
	// that a holder that cannot renew still finishes its grant before
	// another replica can start one. Default: 30s.
	LockTTL time.Duration

	// LockWait is the longest Lock waits for another replica's refresh
	// lock before giving up with an error. Default: 10s.
	LockWait time.Duration

	// DialTimeout bounds connecting to Redis. Default: 5s.
	DialTimeout time.Duration

	// ReadTimeout bounds waiting for one reply from Redis, and writing one
	// command. Default: 3s.
	ReadTimeout time.Duration
}

// WithDefaults returns o with each unset (zero) field that has a default
// set to it.
func (o Options) WithDefaults() Options {
	if len(o.Addresses) == 0 {
		o.Addresses = []string{defaultAddress}
	}
	o.KeyPrefix = cmp.Or(o.KeyPrefix, defaultKeyPrefix)
	o.LockTTL = cmp.Or(o.LockTTL, defaultLockTTL)
	o.LockWait = cmp.Or(o.LockWait, defaultLockWait)
	o.DialTimeout = cmp.Or(o.DialTimeout, defaultDialTimeout)
	o.ReadTimeout = cmp.Or(o.ReadTimeout, defaultReadTimeout)
	return o
}

// check refuses options that no Redis deployment can satisfy. Errors name
// the options as the configuration spells them.
func (o Options) check() error {
	if o.LockTTL < 0 || o.LockWait < 0 || o.DialTimeout < 0 || o.ReadTimeout < 0 {
		return errors.New("redis keystore: lock_ttl, lock_wait, dial_timeout and read_timeout must not be negative")
	}
	// Redis counts a lock's TTL in whole milliseconds (PX, PEXPIRE).
	if o.LockTTL > 0 && o.LockTTL < time.Millisecond {
		return fmt.Errorf("redis keystore: lock_ttl %v must be at least 1ms", o.LockTTL)
	}
	if o.DB < 0 {
		return fmt.Errorf("redis keystore: db %d must not be negative", o.DB)
	}
	if len(o.Addresses) > 1 && o.MasterName == "" && o.DB != 0 {
		return fmt.Errorf("redis keystore: db %d is set, but several addresses mean a Redis Cluster, which only has database 0", o.DB)
	}
	return nil
}

// Store keeps key set documents in Redis, so that replicas share them, and
// lets one replica of the cluster refresh a key set at a time (DESIGN.md
// invariant 4).
//
// Each key set is a hash <key_prefix>keyset:<name> with the fields
// "generation" (in clear, for the compare-and-swap) and "document" (what the
// codec made, perhaps encrypted). Save is a Lua script that writes only when
// the stored generation is the one the new document follows. The refresh
// lock is <key_prefix>lock:<name> holding its holder's random value: a lease
// that the holder renews while it holds it (see Lock).
//
// A lock whose holder died or lost Redis expires after LockTTL, so such a
// replica cannot block the others for long; if the holder was alive after
// all, the generation check keeps its late write from replacing the newer
// key set. Durability is Redis's: enable AOF (appendfsync everysec or
// always) so that a rotated refresh token survives a Redis restart.
type Store struct {
	opts   Options // with defaults applied
	codec  keystore.Codec
	client goredis.UniversalClient

	// closing ends when Close is called: every lease stops renewing, as
	// the client it renews with is going away.
	closing   context.Context
	endLeases context.CancelFunc
}

// New returns a Store configured by opts, with defaults for the unset fields
// (see Options). It connects lazily: Redis being down when the store is made
// fails its operations, not New. Close releases the connections. Documents
// are plain JSON until UseCodec sets another codec.
func New(opts Options) (*Store, error) {
	opts = opts.WithDefaults()
	if err := opts.check(); err != nil {
		return nil, err
	}
	clientOpts := &goredis.UniversalOptions{
		Addrs:        opts.Addresses,
		Username:     opts.Username,
		Password:     opts.Password,
		DB:           opts.DB,
		MasterName:   opts.MasterName,
		DialTimeout:  opts.DialTimeout,
		ReadTimeout:  opts.ReadTimeout,
		WriteTimeout: opts.ReadTimeout,
		// A caller's deadline (the request's, or LockWait) also bounds
		// the network round trips.
		ContextTimeoutEnabled: true,
		// Older and managed servers refuse these handshakes; the store
		// needs neither.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if opts.TLS || opts.TLSServerName != "" {
		clientOpts.TLSConfig = &tls.Config{ServerName: opts.TLSServerName, MinVersion: tls.VersionTLS12}
	}
	closing, endLeases := context.WithCancel(context.Background())
	return &Store{opts: opts, codec: keystore.JSONCodec{}, client: goredis.NewUniversalClient(clientOpts),
		closing: closing, endLeases: endLeases}, nil
}

// UseCodec sets how documents are encoded at rest (plain JSON by default).
func (r *Store) UseCodec(c keystore.Codec) { r.codec = c }

// Close stops renewing the locks still held and closes the store's
// connections to Redis. Those locks then expire after LockTTL, unless their
// holders release them first (which fails once the connections are closed).
func (r *Store) Close() error {
	r.endLeases()
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("closing the redis keystore: %w", err)
	}
	return nil
}

// Key names. Key set names cannot hold a ':', so a document key never
// collides with a lock key, whatever the name.
func (r *Store) documentKey(name string) string { return r.opts.KeyPrefix + "keyset:" + name }
func (r *Store) lockKey(name string) string     { return r.opts.KeyPrefix + "lock:" + name }

// Load implements keystore.Store.
func (r *Store) Load(ctx context.Context, name string) (*keystore.KeySet, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	fields, err := r.client.HMGet(ctx, r.documentKey(name), "generation", "document").Result()
	if err != nil {
		return nil, fmt.Errorf("loading key set %q from redis: %w", name, err)
	}
	generation, _ := fields[0].(string)
	document, ok := fields[1].(string)
	if !ok {
		return nil, fmt.Errorf("loading key set %q from redis: %w", name, keystore.ErrNotFound)
	}
	ks, err := r.codec.Decode(name, []byte(document))
	if err != nil {
		return nil, err
	}
	// The clear generation decides Save's compare-and-swap; it must be
	// the document's, or a writer could be fenced by a number it never saw.
	if generation != strconv.FormatInt(ks.Generation, 10) {
		return nil, fmt.Errorf("%w: key set %q is stored as generation %q, its document says %d", keystore.ErrCorrupt, name, generation, ks.Generation)
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
var saveScript = goredis.NewScript(`
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

// Save implements keystore.Store with saveScript, so the check and the
// write are one atomic step in Redis.
func (r *Store) Save(ctx context.Context, ks *keystore.KeySet) error {
	if err := keystore.ValidateName(ks.Name); err != nil {
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
		return fmt.Errorf("saving key set %q generation %d over stored generation %v: %w", ks.Name, ks.Generation, reply[1], keystore.ErrConflict)
	}
	return nil
}

// scanCount is the COUNT hint of Names's SCAN: how many keys Redis
// looks at per call, which bounds how long each call blocks the server.
const scanCount = 1000

// Names implements keystore.Lister. It walks the document keys with SCAN, never
// KEYS, which would block Redis for as long as it takes to match every key;
// on a Redis Cluster it scans every master, as each holds only its slots.
// Lock keys do not match; keys under the prefix that do not name a valid
// key set are skipped.
func (r *Store) Names(ctx context.Context) ([]string, error) {
	pattern := escapeGlob(r.documentKey("")) + "*"
	var (
		mu    sync.Mutex // guards names
		names = []string{}
	)
	scan := func(ctx context.Context, c goredis.Cmdable) error {
		iter := c.Scan(ctx, 0, pattern, scanCount).Iterator()
		for iter.Next(ctx) {
			name, ok := strings.CutPrefix(iter.Val(), r.documentKey(""))
			if !ok || keystore.ValidateName(name) != nil {
				continue
			}
			mu.Lock()
			names = append(names, name)
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if cluster, ok := r.client.(*goredis.ClusterClient); ok {
		err = cluster.ForEachMaster(ctx, func(ctx context.Context, node *goredis.Client) error {
			return scan(ctx, node)
		})
	} else {
		err = scan(ctx, r.client)
	}
	if err != nil {
		return nil, fmt.Errorf("listing key sets in redis: %w", err)
	}
	// SCAN may return a key more than once.
	slices.Sort(names)
	return slices.Compact(names), nil
}

// escapeGlob escapes the characters that are special in a Redis MATCH
// pattern, so that a key prefix matches only itself.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Interface guards
var (
	_ keystore.Store  = (*Store)(nil)
	_ keystore.Lister = (*Store)(nil)
)
