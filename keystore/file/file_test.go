package file_test

import (
	"bufio"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/keystoretest"
)

func newStore(t *testing.T, dir string) *file.Store {
	t.Helper()
	f, err := file.New(dir)
	if err != nil {
		t.Fatalf("New(%q) = %v; want nil", dir, err)
	}
	return f
}

func TestConformance(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystore.Store {
		return newStore(t, t.TempDir())
	})
}

// TestPermissions: documents hold refresh tokens, so only the owner may
// read them, and an existing directory readable by others is tightened.
func TestPermissions(t *testing.T) {
	tests := []struct {
		name    string
		existed os.FileMode // 0: the store creates the directory
	}{
		{"created", 0},
		{"existing 0755 tightened", 0o755},
		{"existing 0777 tightened", 0o777},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "keys")
			if tt.existed != 0 {
				if err := os.Mkdir(dir, tt.existed); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, tt.existed); err != nil { // past the umask
					t.Fatal(err)
				}
			}
			f := newStore(t, dir)
			if err := f.Save(t.Context(), keystoretest.Seed("perm")); err != nil {
				t.Fatalf("Save(%q) = %v; want nil", "perm", err)
			}
			assertMode(t, dir, 0o700)
			assertMode(t, filepath.Join(dir, "perm.json"), 0o600)
			unlock, err := f.Lock(t.Context(), "perm")
			if err != nil {
				t.Fatalf("Lock(%q) = %v; want nil", "perm", err)
			}
			defer unlock()
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries { // lock files too
				assertMode(t, filepath.Join(dir, e.Name()), 0o600)
			}
		})
	}
}

func assertMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("mode of %s = %#o; want %#o", path, got, want)
	}
}

// TestSaveLeavesNoTemporaryFiles: the atomic write's temporary file is
// renamed away, on success and on a refused write alike.
func TestSaveLeavesNoTemporaryFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := newStore(t, dir)
	ks := keystoretest.Seed("tidy")
	if err := f.Save(t.Context(), ks); err != nil {
		t.Fatalf("Save(%q) = %v; want nil", ks.Name, err)
	}
	next := ks.Next(keystore.Token{"access_token": []byte(`"at"`)}, time.Time{}, time.Now())
	if err := f.Save(t.Context(), next); err != nil {
		t.Fatalf("Save(%q generation 2) = %v; want nil", ks.Name, err)
	}
	if err := f.Save(t.Context(), next); !errors.Is(err, keystore.ErrConflict) {
		t.Fatalf("Save(%q generation 2) again = %v; want ErrConflict", ks.Name, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if name := e.Name(); name != "tidy.json" && !strings.HasSuffix(name, ".lock") {
			t.Errorf("after Save, %s holds %q; want only the document and lock files", dir, name)
		}
	}
}

// TestCorruptDocument: a torn or foreign document is reported as
// ErrCorrupt naming the key set, never as a missing one (which would make
// the proxy fall back to its seed and overwrite it).
func TestCorruptDocument(t *testing.T) {
	valid, err := keystore.JSONCodec{}.Encode(keystoretest.Seed("torn"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"torn", valid[:len(valid)/2]},
		{"empty", nil},
		{"garbage", []byte("\x00\x01not json at all")},
		{"no tokens", []byte(`{"name":"torn","generation":1,"token":{}}`)},
		{"generation 0", []byte(`{"name":"torn","generation":0,"token":{"refresh_token":"rt"}}`)},
		{"another key set's document", []byte(`{"name":"other","generation":1,"token":{"refresh_token":"rt"}}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			f := newStore(t, dir)
			if err := os.WriteFile(filepath.Join(dir, "torn.json"), tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := f.Load(t.Context(), "torn")
			if !errors.Is(err, keystore.ErrCorrupt) || !strings.Contains(err.Error(), `"torn"`) {
				t.Errorf("Load(%q) = %v; want ErrCorrupt naming %q", "torn", err, "torn")
			}
			// Nor may a Save replace what it cannot read.
			if err := f.Save(t.Context(), keystoretest.Seed("torn")); err == nil {
				t.Errorf("Save(%q) over a corrupt document = nil; want an error", "torn")
			}
		})
	}
}

// lockChildEnv makes the test binary a child process that holds a Store's
// lock; its value is the store's directory.
const lockChildEnv = "KEYSTORE_TEST_LOCK_CHILD_DIR"

// TestLockHelperProcess is not a test: run by TestLockAcrossProcesses
// as a child process, it takes the lock, says "locked" on stdout, and holds
// the lock until its stdin closes or it is killed.
func TestLockHelperProcess(t *testing.T) {
	dir := os.Getenv(lockChildEnv)
	if dir == "" {
		t.Skip("helper process for TestLockAcrossProcesses")
	}
	f := newStore(t, dir)
	unlock, err := f.Lock(context.Background(), "shared")
	if err != nil {
		t.Fatalf("child: Lock(%q) = %v; want nil", "shared", err)
	}
	os.Stdout.WriteString("locked\n")
	bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes stdin
	if err := unlock(); err != nil {
		t.Fatalf("child: unlock(%q) = %v; want nil", "shared", err)
	}
}

// TestLockAcrossProcesses: the refresh lock excludes other processes
// sharing the directory (replicas on one volume), and the kernel releases
// it when its holder exits, cleanly or killed.
func TestLockAcrossProcesses(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("the file keystore's locks need flock(2)")
	}
	tests := []struct {
		name    string
		release func(cmd *exec.Cmd, stdin interface{ Close() error }) error
	}{
		{"child unlocks", func(_ *exec.Cmd, stdin interface{ Close() error }) error { return stdin.Close() }},
		{"child killed", func(cmd *exec.Cmd, _ interface{ Close() error }) error { return cmd.Process.Kill() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestLockHelperProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), lockChildEnv+"="+dir)
			cmd.Stderr = os.Stderr
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer stdin.Close()
			if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "locked\n" {
				t.Fatalf("child said %q, %v; want %q", line, err, "locked\n")
			}

			f := newStore(t, dir)
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			if _, err := f.Lock(ctx, "shared"); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Lock(%q) while a child process holds it = %v; want context.DeadlineExceeded", "shared", err)
			}

			var released atomic.Bool
			locked := make(chan error, 1)
			go func() {
				unlock, err := f.Lock(t.Context(), "shared")
				if err == nil {
					if !released.Load() {
						err = errors.New("Lock returned while the child still held the lock")
					}
					unlock()
				}
				locked <- err
			}()
			released.Store(true)
			if err := tt.release(cmd, stdin); err != nil {
				t.Fatal(err)
			}
			if err := <-locked; err != nil {
				t.Fatalf("Lock(%q) after the child let go = %v; want nil", "shared", err)
			}
		})
	}
}

// TestNamesSkipsStrays: Names lists the documents only, not what else
// sits in the directory: lock files, an abandoned temporary file, a
// directory named like a document, files that are no document of a valid
// name.
func TestNamesSkipsStrays(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st := newStore(t, dir)
	for _, name := range []string{"b", "a-b", "a"} {
		if err := st.Save(t.Context(), keystoretest.Seed(name)); err != nil {
			t.Fatalf("Save(%q) = %v; want nil", name, err)
		}
	}
	for _, stray := range []string{"README", "notes.txt", ".hidden.json", "bad name.json", ".json", ".a.1234.tmp", ".c.refresh.lock"} {
		if err := os.WriteFile(filepath.Join(dir, stray), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "dir.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "a-b", "b"}
	if got, err := st.Names(t.Context()); err != nil || !slices.Equal(got, want) {
		t.Errorf("Names() = %q, %v; want %q, nil", got, err, want)
	}
}

// TestNamesMissingDirectory: a directory removed under the store is an
// error naming it, not an empty list that would hide the loss.
func TestNamesMissingDirectory(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "keys")
	st := newStore(t, dir)
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	got, err := st.Names(t.Context())
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), dir) {
		t.Errorf("Names() = %q, %v; want an fs.ErrNotExist naming %q", got, err, dir)
	}
}
