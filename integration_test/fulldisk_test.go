package integration_test

import (
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// fullDiskSize is the size of the filesystem the keystore is on: room for
// its documents, and quickly filled.
const fullDiskSize = "256k"

// Issue 24, item 2: the file keystore's filesystem fills up while a
// proactive refresh falls due. The grant succeeds (and the provider revokes
// the access token before it) and the save fails: every request is still
// served, with the new access token from memory; its refresh token is not
// spent while it is unsaved; the first request after the disk has room
// stores it; and a restart afterwards refreshes with the stored refresh
// token, with no reuse detected.
func TestFullDiskServesFromMemory(t *testing.T) {
	t.Parallel()
	mnt := mountSmallFilesystem(t)
	dir := filepath.Join(mnt, "keystore")
	auth := newAuthServer(t, authserver.Config{AccessTokenLifespan: 6 * time.Second})
	api := newResourceServer(t, auth)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: "file " + dir, seed: seedToken(t, auth),
		options: []string{"refresh proactive", "expiry_skew 2s"},
	})
	c := newClient(t, 2)
	if r := get(c, sc.URL()+"/before"); r.status != http.StatusOK {
		t.Fatalf("request before the disk filled: %s; want 200", r)
	}
	before, _ := readKeySet(t, dir, keySetName)
	fillFilesystem(t, filepath.Join(mnt, "fill"))

	// Until the proactive grant has met the full disk, then a second more:
	// every request 200.
	served := 0
	waitFor(t, 10*time.Second, "a grant whose save met the full disk", func() bool {
		if r := get(c, sc.URL()+"/full"); r.status != http.StatusOK {
			t.Fatalf("request %d while the disk is full: %s; want 200", served, r)
		}
		served++
		return countSaveFailures(t, sc) > 0
	})
	attempts := auth.GrantAttempts()
	for end := time.Now().Add(time.Second); time.Now().Before(end); served++ {
		if r := get(c, sc.URL()+"/full"); r.status != http.StatusOK {
			t.Fatalf("request %d while the disk is full: %s; want 200, from memory", served, r)
		}
	}
	if got := auth.GrantAttempts(); got != attempts {
		t.Errorf("grant attempts while the key set was unsaved = %d more; want none (its refresh token waits until stored)", got-attempts)
	}
	if now, _ := readKeySet(t, dir, keySetName); now.Generation != before.Generation {
		t.Fatalf("stored generation %d while the disk was full; want %d", now.Generation, before.Generation)
	}
	t.Logf("%d requests served while the disk was full, %d grant attempts", served, attempts)

	// Room again: one request, and the key set is stored.
	if err := os.Remove(filepath.Join(mnt, "fill")); err != nil {
		t.Fatal(err)
	}
	if r := get(c, sc.URL()+"/room"); r.status != http.StatusOK {
		t.Fatalf("request once the disk has room: %s; want 200", r)
	}
	waitFor(t, 5*time.Second, "the key set stored after one request", func() bool {
		ks, _ := readKeySet(t, dir, keySetName)
		return ks.Generation == before.Generation+1
	})
	stored, _ := readKeySet(t, dir, keySetName)
	if stored.Token.RefreshToken() != lastRefreshToken(auth) {
		t.Errorf("the stored refresh token is not the one issued last")
	}

	// A restart goes on with the stored refresh token.
	if err := sc.Stop(); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	mustStart(t, sc)
	awaitRotation(t, newClient(t, 2), sc, dir, stored.Generation)
	if n := auth.ReuseDetections(); n != 0 {
		t.Errorf("reuse detections = %d; want 0", n)
	}
}

// mountSmallFilesystem mounts a tmpfs of fullDiskSize on a new directory,
// unmounted when the test ends. Mounting needs root (CI runs as root); the
// test is skipped, saying so, where it cannot.
func mountSmallFilesystem(t *testing.T) string {
	t.Helper()
	mnt := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+fullDiskSize+",mode=0700", "tmpfs", mnt).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// fillFilesystem writes path until the filesystem has no space left.
func fillFilesystem(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 4096)
	for {
		if _, err := f.Write(block); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v; want ENOSPC", path, err)
			}
			return
		}
	}
}

// countSaveFailures counts the sidecar's refresh failures with the
// keystore's code.
func countSaveFailures(t *testing.T, sc *sidecar.Process) int {
	t.Helper()
	entries, err := sc.Entries()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if e.Msg == sidecar.MsgFailed && e.String("error_code") == "keystore_unavailable" {
			n++
		}
	}
	return n
}
