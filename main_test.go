package oauth2upstream

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/leakcheck"
)

// TestMain checks, after the whole suite, that no goroutine of this package
// outlived its test and that no request body's temporary file is still
// open: cancelled, failed and replayed requests all clean up.
func TestMain(m *testing.M) {
	os.Exit(leakcheck.Main(m, "github.com/oauth2upstream/caddy-oauth2-upstream.", func() error {
		if files := openBodyFiles(); len(files) > 0 {
			return fmt.Errorf("%d request body temporary files still open: %v", len(files), files)
		}
		return nil
	}))
}

// openBodyFiles lists this process's open descriptors on replay temp files
// (unlinked at creation, so they show as "(deleted)").
func openBodyFiles() []string {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil // not Linux: nothing to check
	}
	var open []string
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.Contains(target, "oauth2-upstream-body-") {
			open = append(open, target)
		}
	}
	return open
}

// A request cancelled mid-upload leaves no temporary file open.
func TestCancelledUploadLeavesNoFile(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", BodyOptions: BodyOptions{ReplayMemory: 1024}}, hostPort(t, api.server.URL))
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, s.server.URL+"/upload", pr)
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := s.server.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}()
	pw.Write(bytes.Repeat([]byte("x"), 64<<10)) // past the memory threshold: a file exists
	pw.CloseWithError(fmt.Errorf("client gave up"))
	<-done
}
