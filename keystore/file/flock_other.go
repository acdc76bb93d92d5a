//go:build !unix

package file

import (
	"context"
	"errors"
)

// lockFile is not implemented where flock(2) is missing: the file keystore
// cannot coordinate processes there, and says so rather than pretend.
func lockFile(context.Context, string) (func() error, error) {
	return nil, errors.New("the file keystore needs flock(2), which this platform lacks")
}
