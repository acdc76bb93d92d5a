package bench

import (
	"context"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// A loaded, idle key set costs at most 4 KiB of heap in the engine, and names
// that are asked for but not stored cost nothing: the engine keeps no
// state for them (issue: 10,000 accounts in one sidecar). Small numbers
// here, so that the bound holds against the test process's own noise; the
// figures BENCHMARKS.md quotes come from cmd/bench -parts scale.
func TestEngineMemory(t *testing.T) {
	const keySets, unknown = 200, 2000
	m, err := MeasureEngineMemory(context.Background(), t.TempDir(), keySets, 0, unknown)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d key sets: %.0f B each (document %d B); %d unknown names: %+d B", keySets, m.PerKeySet(), m.DocumentSize, unknown, m.UnknownGrowth())
	if per := m.PerKeySet(); per <= 0 || per > 4<<10 {
		t.Errorf("MeasureEngineMemory(%d key sets) = %.0f B per key set; want between 0 and 4 KiB (issue 16)", keySets, per)
	}
	if g := m.UnknownGrowth(); g > 64<<10 {
		t.Errorf("MeasureEngineMemory: %d unknown names grew the live heap by %d B; want at most 64 KiB", unknown, g)
	}
}

// BenchmarkListPage is a page of the admin list in the engine, among
// 10,000 loaded key sets: what GET /oauth2_upstream/key_sets?limit=100
// costs before HTTP (go test -run '^$' -bench ListPage -cpuprofile cpu.out).
func BenchmarkListPage(b *testing.B) {
	const keySets = 10_000
	dir := b.TempDir()
	names := accountNames(keySets)
	expiry := time.Now().Add(24 * time.Hour)
	seed := AccountSeed{Names: names, Expiry: func(int) time.Time { return expiry }, Client: bindingOf(engineTokenURL)}
	if err := SeedFileAccounts(dir, seed); err != nil {
		b.Fatal(err)
	}
	store, err := file.New(dir)
	if err != nil {
		b.Fatal(err)
	}
	engine := credential.New(store, credential.Config{
		Endpoint:  credential.TokenEndpoint{URL: engineTokenURL, ClientID: benchClientID},
		Keepalive: -1, CheckInterval: time.Hour,
	})
	defer engine.Close()
	for _, name := range names {
		if _, err := engine.Current(context.Background(), name); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		after := names[(i*listPageSize)%keySets] // a page somewhere in the list
		page := credential.MergeStatuses(engine.StatusesAfter(after, listPageSize+1))
		if len(page) == 0 && after != names[keySets-1] {
			b.Fatalf("no page after %s", after)
		}
	}
}
