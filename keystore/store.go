package keystore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Store keeps key set documents durably and coordinates refreshes between
// the processes that share it. Every backend passes the conformance suite in
// keystoretest. Errors wrap ErrNotFound, ErrConflict, ErrCorrupt or
// ErrInvalidName where those apply.
type Store interface {
	// Load returns the stored key set named name.
	Load(ctx context.Context, name string) (*KeySet, error)

	// Save stores ks atomically and durably, as a compare-and-swap on the
	// generation: it succeeds only when ks.Generation is exactly one more
	// than the stored generation (or 1 when nothing is stored), and fails
	// with ErrConflict otherwise. A failed Save leaves the stored document
	// as it was.
	Save(ctx context.Context, ks *KeySet) error

	// Lock takes the named key set's refresh lock, exclusive across every
	// process sharing the store, waiting until it is free or ctx ends. The
	// holder re-reads the key set, grants, saves, then calls unlock. A lock
	// may expire (a backend with a TTL); Save's generation check keeps a
	// holder whose lock expired from overwriting a newer key set.
	Lock(ctx context.Context, name string) (unlock func() error, err error)
}

// CodecSetter is implemented by a Store whose documents at rest can be
// encoded by another Codec, such as encryption (NewEncryptingCodec).
type CodecSetter interface {
	// UseCodec sets how documents are encoded at rest.
	UseCodec(Codec)
}

// LockLeaser is implemented by a Store whose refresh locks expire when their
// holder stops renewing them.
type LockLeaser interface {
	// LockLease is how long a refresh lock lasts unrenewed.
	LockLease() time.Duration
}

// Codec turns a key set into the bytes a backend stores and back. The
// default is plain JSON; an encrypting codec keeps documents secret at rest.
type Codec interface {
	Encode(ks *KeySet) ([]byte, error)
	// Decode decodes and validates the document stored under name.
	Decode(name string, data []byte) (*KeySet, error)
}

// JSONCodec stores the key set document as indented JSON.
type JSONCodec struct{}

// Encode implements Codec. HTML escaping is off so that token values keep
// the provider's exact text ("<" stays "<", not "\u003c").
func (JSONCodec) Encode(ks *KeySet) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(ks); err != nil {
		return nil, fmt.Errorf("encoding key set %q: %w", ks.Name, err)
	}
	return buf.Bytes(), nil
}

// Decode implements Codec.
func (JSONCodec) Decode(name string, data []byte) (*KeySet, error) {
	var ks KeySet
	if err := json.Unmarshal(data, &ks); err != nil {
		// The JSON error names an offset, never a value from the document.
		return nil, fmt.Errorf("%w: decoding key set %q: %v", ErrCorrupt, name, err)
	}
	if err := ks.Validate(name); err != nil {
		return nil, err
	}
	return &ks, nil
}

// CheckFollows is the compare of a compare-and-swap, for backends that hold
// a write lock of their own while they save: ks must be exactly one
// generation after what load finds (1 when nothing is stored), or the save
// is an ErrConflict. Any other load error is returned wrapped, so a document
// that cannot be read is never replaced.
func CheckFollows(ctx context.Context, ks *KeySet, load func(context.Context, string) (*KeySet, error)) error {
	stored, err := load(ctx, ks.Name)
	var have int64
	switch {
	case err == nil:
		have = stored.Generation
	case errors.Is(err, ErrNotFound):
	default:
		return fmt.Errorf("saving key set %q: reading the stored generation: %w", ks.Name, err)
	}
	if ks.Generation != have+1 {
		return fmt.Errorf("saving key set %q generation %d over stored generation %d: %w", ks.Name, ks.Generation, have, ErrConflict)
	}
	return nil
}
