package keystore

import "context"

// Lister is implemented by a Store that can name the key sets it holds, so
// that work over every stored key set (a background keepalive) can find
// them. Every backend of this module implements it.
type Lister interface {
	// Names returns the names of every stored key set, sorted, each once;
	// an empty store gives an empty list and no error. What is not a key
	// set document of a valid name (lock files or keys, temporary files,
	// stray files, another application's keys) is skipped. A key set saved
	// or removed while Names runs may or may not be listed.
	Names(ctx context.Context) ([]string, error)
}
