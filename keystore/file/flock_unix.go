//go:build unix

package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockPollInterval is how often a waiter retries a held flock. flock(2)
// cannot be cancelled while blocked, so waiting polls a non-blocking lock
// and honours the context between tries.
const lockPollInterval = 5 * time.Millisecond

// lockFile takes an exclusive flock on path, creating the file 0600 if
// needed, and returns the function that releases it. Each call opens its own
// file description, so two holders in one process exclude each other too.
func lockFile(ctx context.Context, path string) (func() error, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	ticker := (*time.Ticker)(nil)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() error {
				// Closing the descriptor releases the lock.
				return f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", path, err)
		}
		if ticker == nil {
			ticker = time.NewTicker(lockPollInterval)
			defer ticker.Stop()
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
		case <-ticker.C:
		}
	}
}
