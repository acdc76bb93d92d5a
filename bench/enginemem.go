package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"runtime/metrics"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// What a loaded, idle key set costs in memory, measured in this process:
// a credential.Engine (what the handler keeps per key set) over a file
// keystore of n key sets, the live heap read with runtime/metrics after a
// full GC before and after every key set was loaded. The Caddy process's
// figure (HeapAlloc after a GC, through its admin API) is in scale.go; it
// carries the noise of a whole server, which this one does not.

// liveHeapMetric is the heap the last GC found live; after runtime.GC it
// is exactly the live heap.
const liveHeapMetric = "/gc/heap/live:bytes"

// liveHeap runs two full GCs (the second frees what finalizers and
// sync.Pool victim caches kept through the first) and returns the live heap.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	s := []metrics.Sample{{Name: liveHeapMetric}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

// EngineMemory is what one in-process measurement found.
type EngineMemory struct {
	KeySets         int
	AccessTokenSize int   // bytes of each access token
	DocumentSize    int   // bytes of one stored document
	Before          int64 // live heap with the engine made, nothing loaded
	Loaded          int64 // live heap with every key set loaded
	Unknown         int   // distinct names asked for that are not stored
	AfterUnknown    int64 // live heap after asking for them
	// ListPages is how long each page of a walk through the loaded key
	// sets took in the engine (StatusesAfter, then what the admin list
	// does with a page: MergeStatuses and JSON), listPageSize a page.
	ListPages []time.Duration
}

// listPageSize is the admin list's default page size.
const listPageSize = 100

// PerKeySet is the live heap each loaded key set added.
func (m EngineMemory) PerKeySet() float64 { return float64(m.Loaded-m.Before) / float64(m.KeySets) }

// UnknownGrowth is what asking for the unknown names added to the live heap.
func (m EngineMemory) UnknownGrowth() int64 { return m.AfterUnknown - m.Loaded }

// engineTokenURL is the token endpoint of the in-process engine: it makes
// no grant (every token is valid for a day), so nothing listens there.
const engineTokenURL = "http://127.0.0.1:9/token"

// MeasureEngineMemory seeds n key sets into a file keystore at dir (access
// tokens padded to tokenSize bytes, 0 for the harness's 30-byte ones), makes
// an engine over it, loads every key set with Current, then asks for unknown
// distinct names that are not stored, reading the live heap at each step.
func MeasureEngineMemory(ctx context.Context, dir string, n, tokenSize, unknown int) (EngineMemory, error) {
	m := EngineMemory{KeySets: n, Unknown: unknown}
	names := accountNames(n)
	expiry := time.Now().Add(24 * time.Hour)
	seed := AccountSeed{Names: names, Expiry: func(int) time.Time { return expiry },
		Client: keystore.Binding{TokenURL: engineTokenURL, ClientID: benchClientID}, AccessTokenSize: tokenSize}
	if err := SeedFileAccounts(dir, seed); err != nil {
		return m, err
	}
	doc, err := keystore.JSONCodec{}.Encode(seed.keySet(0, time.Now()))
	if err != nil {
		return m, err
	}
	m.DocumentSize = len(doc)
	m.AccessTokenSize = len(seed.keySet(0, time.Now()).Token.AccessToken())
	store, err := file.New(dir)
	if err != nil {
		return m, err
	}
	engine := credential.New(store, credential.Config{
		Endpoint:      credential.TokenEndpoint{URL: engineTokenURL, ClientID: benchClientID, ClientSecret: benchSecret},
		Keepalive:     -1,        // no background grants or listing
		CheckInterval: time.Hour, // no background checks during the measurement
	})
	defer engine.Close()

	m.Before = liveHeap()
	for _, name := range names {
		if _, err := engine.Current(ctx, name); err != nil {
			return m, fmt.Errorf("loading %s: %w", name, err)
		}
	}
	m.Loaded = liveHeap()
	m.ListPages = walkStatuses(engine)
	for _, name := range unknownNames(unknown) {
		var ce *credential.Error
		if _, err := engine.Current(ctx, name); !errors.As(err, &ce) || ce.Code != credential.CodeNoKeySet {
			return m, fmt.Errorf("Current(%q) = %v; want a %s error", name, err, credential.CodeNoKeySet)
		}
	}
	m.AfterUnknown = liveHeap()
	runtime.KeepAlive(engine)
	return m, nil
}

// walkStatuses pages through the engine's key sets as the admin list does
// (limit+1 to tell whether a page follows), timing each page.
func walkStatuses(engine *credential.Engine) []time.Duration {
	var pages []time.Duration
	after := ""
	for {
		start := time.Now()
		page := credential.MergeStatuses(engine.StatusesAfter(after, listPageSize+1))
		more := len(page) > listPageSize
		if more {
			page = page[:listPageSize]
		}
		json.Marshal(page)
		pages = append(pages, time.Since(start))
		if !more {
			return pages
		}
		after = page[len(page)-1].Name
	}
}
