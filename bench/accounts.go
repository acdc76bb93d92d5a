package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// Many accounts behind one sidecar: key sets named acct-00000, acct-00001,
// ..., selected per request by the X-Account header, as an integration
// platform serving many customer accounts of one OAuth2 client would.

// accountHeader carries the key set name of a request.
const accountHeader = "X-Account"

// The key set of the sidecars with many accounts: the account header,
// admitted by accountAllow. unknownAllowed names pass accountAllow but are
// never stored (502 no_key_set); unknownRefused names do not pass it (403).
const (
	accountKeySet  = "{http.request.header." + accountHeader + "}"
	accountAllow   = "acct-[0-9]{5,6}"
	benchClientID  = "bench-client"
	benchSecret    = "bench-secret"
	accountSeedAge = time.Hour // how long ago the seeded generation was granted
)

// accountName is the key set name of account i.
func accountName(i int) string { return fmt.Sprintf("acct-%05d", i) }

// accountNames names accounts 0..n-1.
func accountNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = accountName(i)
	}
	return names
}

// unknownNames are n distinct names that requests may select but that no
// keystore holds: the first half admitted by accountAllow (acct-1xxxxx,
// answered 502 no_key_set), the second half refused by it (403).
func unknownNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		if i < n/2 {
			names[i] = fmt.Sprintf("acct-%06d", 100_000+i)
		} else {
			names[i] = fmt.Sprintf("other-%06d", i)
		}
	}
	return names
}

// Token values of the account harness encode what the upstream checks: the
// access token names its account, its generation and its expiry (Unix
// milliseconds), so the upstream can tell an expired or misdirected token
// without asking anyone; the refresh token names its account and the
// generation it was issued with, so the token endpoint can tell a refresh
// token spent twice.
func accountAccessToken(name string, gen int64, expiry time.Time, pad int) string {
	t := "at." + name + "." + strconv.FormatInt(gen, 10) + "." + strconv.FormatInt(expiry.UnixMilli(), 10)
	if pad > len(t) {
		// A JWT-sized token: the same fields, then filler.
		t += "." + strings.Repeat("x", pad-len(t)-1)
	}
	return t
}

func accountRefreshToken(name string, gen int64) string {
	return "rt." + name + "." + strconv.FormatInt(gen, 10)
}

// parseAccessToken reads an access token of accountAccessToken.
func parseAccessToken(t string) (name string, gen int64, expiry time.Time, ok bool) {
	parts := strings.SplitN(t, ".", 5)
	if len(parts) < 4 || parts[0] != "at" {
		return "", 0, time.Time{}, false
	}
	gen, err1 := strconv.ParseInt(parts[2], 10, 64)
	ms, err2 := strconv.ParseInt(parts[3], 10, 64)
	if err1 != nil || err2 != nil {
		return "", 0, time.Time{}, false
	}
	return parts[1], gen, time.UnixMilli(ms), true
}

// parseRefreshToken reads a refresh token of accountRefreshToken.
func parseRefreshToken(t string) (name string, gen int64, ok bool) {
	rest, found := strings.CutPrefix(t, "rt.")
	i := strings.LastIndexByte(rest, '.')
	if !found || i < 0 {
		return "", 0, false
	}
	gen, err := strconv.ParseInt(rest[i+1:], 10, 64)
	return rest[:i], gen, err == nil
}

// bindingOf is the client binding of the harness's sidecars at tokenURL.
func bindingOf(tokenURL string) keystore.Binding {
	return keystore.Binding{TokenURL: tokenURL, ClientID: benchClientID}
}

// AccountSeed describes generation 1 of the key sets of many accounts.
type AccountSeed struct {
	Names []string
	// Expiry is when account i's access token expires.
	Expiry func(i int) time.Time
	// Client binds the key sets to the sidecar's client, as a grant would.
	Client keystore.Binding
	// AccessTokenSize pads access tokens to this many bytes (0: about 30).
	AccessTokenSize int
}

// keySet is account i's seeded key set: granted accountSeedAge ago (so its
// lifetime is long and the full expiry_skew applies), with an access token
// valid until Expiry(i) and a refresh token for the next grant.
func (s AccountSeed) keySet(i int, now time.Time) *keystore.KeySet {
	name, expiry := s.Names[i], s.Expiry(i)
	client := s.Client
	ks := &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: now.Add(-accountSeedAge).UTC(),
		Expiry: expiry.UTC(), Token: keystore.Token{}, Client: &client}
	ks.Token.SetString(keystore.FieldAccessToken, accountAccessToken(name, 1, expiry, s.AccessTokenSize))
	ks.Token.SetString(keystore.FieldRefreshToken, accountRefreshToken(name, 1))
	ks.Token.SetString(keystore.FieldTokenType, "Bearer")
	ks.Token[keystore.FieldExpiresIn] = json.RawMessage(strconv.Itoa(int(expiry.Sub(ks.UpdatedAt) / time.Second)))
	return ks
}

// SeedFileAccounts writes the seed into a file keystore at dir.
// file.Store saves a document in about 5 ms here (two fsyncs), 50 s for
// ten thousand, so the documents are written as the file keystore lays them
// out (<name>.json, its JSON codec) without fsync, which a benchmark's
// scratch directory does not need; reading them all back through the store
// checks that layout.
func SeedFileAccounts(dir string, seed AccountSeed) error {
	store, err := file.New(dir)
	if err != nil {
		return err
	}
	now := time.Now()
	err = parallel(len(seed.Names), func(i int) error {
		data, err := keystore.JSONCodec{}.Encode(seed.keySet(i, now))
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, seed.Names[i]+".json"), data, 0o600)
	})
	if err != nil {
		return err
	}
	return checkSeeded(store, seed.Names)
}

// SeedStoreAccounts saves the seed through store (Redis, say), in parallel.
func SeedStoreAccounts(ctx context.Context, store keystore.Store, seed AccountSeed) error {
	now := time.Now()
	return parallel(len(seed.Names), func(i int) error {
		return store.Save(ctx, seed.keySet(i, now))
	})
}

// checkSeeded reads every seeded key set back through store.
func checkSeeded(store *file.Store, names []string) error {
	listed, err := store.Names(context.Background())
	if err != nil {
		return err
	}
	if len(listed) != len(names) {
		return fmt.Errorf("seeded %d key sets, the keystore lists %d", len(names), len(listed))
	}
	return parallel(len(names), func(i int) error {
		ks, err := store.Load(context.Background(), names[i])
		if err == nil && ks.Generation != 1 {
			err = fmt.Errorf("key set %q: generation %d, want 1", names[i], ks.Generation)
		}
		return err
	})
}

// parallel runs f(0..n-1) on a few goroutines and returns the first error.
func parallel(n int, f func(i int) error) error {
	const workers = 16
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards first
		first error
	)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}
