package keystore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// encryptedCipher names the only cipher an encrypted document may use.
const encryptedCipher = "AES-256-GCM"

// envelope is an encrypted key set document. Name and generation stay in
// clear for operators, and are authenticated with the ciphertext: both are
// the GCM additional data, so a document copied to another name, or given
// another generation, does not decrypt.
type envelope struct {
	Name       string `json:"name"`
	Generation int64  `json:"generation"`
	Cipher     string `json:"cipher"`
	KeyID      string `json:"key_id"`
	Nonce      string `json:"nonce"`
	Ciphertext string `json:"ciphertext"`
}

// EncryptingCodec keeps key set documents secret at rest with AES-256-GCM,
// a random nonce per write, and the key set name and generation as
// additional data. It encrypts with its first key and decrypts with any of
// them, so keys can be rotated: put the new key first, keep the old ones
// until every document was rewritten.
type EncryptingCodec struct {
	plain JSONCodec
	keys  []encryptionKey // keys[0] encrypts
}

type encryptionKey struct {
	id   string
	aead cipher.AEAD
}

// NewEncryptingCodec returns a codec for the given keys, each 32 bytes in
// standard or URL-safe base64; the first encrypts.
func NewEncryptingCodec(keys ...string) (*EncryptingCodec, error) {
	if len(keys) == 0 {
		return nil, errors.New("encryption needs at least one key")
	}
	c := &EncryptingCodec{}
	for i, encoded := range keys {
		raw, err := decodeKey(encoded)
		if err != nil {
			// The error names the key's position, never its value.
			return nil, fmt.Errorf("encryption key %d: %w", i+1, err)
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			return nil, fmt.Errorf("encryption key %d: %w", i+1, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("encryption key %d: %w", i+1, err)
		}
		sum := sha256.Sum256(raw)
		c.keys = append(c.keys, encryptionKey{id: hex.EncodeToString(sum[:4]), aead: aead})
	}
	return c, nil
}

func decodeKey(encoded string) ([]byte, error) {
	encoded = strings.TrimSpace(encoded)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if raw, err := enc.DecodeString(encoded); err == nil {
			if len(raw) != 32 {
				return nil, fmt.Errorf("decodes to %d bytes; AES-256 needs 32 (make one with: head -c 32 /dev/urandom | base64)", len(raw))
			}
			return raw, nil
		}
	}
	return nil, errors.New("is not base64 (make one with: head -c 32 /dev/urandom | base64)")
}

// additionalData binds a ciphertext to its key set name and generation.
func additionalData(name string, generation int64) []byte {
	ad := binary.BigEndian.AppendUint64(nil, uint64(generation))
	return append(ad, name...)
}

// Encode implements Codec.
func (c *EncryptingCodec) Encode(ks *KeySet) ([]byte, error) {
	plaintext, err := c.plain.Encode(ks)
	if err != nil {
		return nil, err
	}
	key := c.keys[0]
	nonce := make([]byte, key.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("encrypting key set %q: %w", ks.Name, err)
	}
	sealed := key.aead.Seal(nil, nonce, plaintext, additionalData(ks.Name, ks.Generation))
	data, err := json.MarshalIndent(envelope{
		Name:       ks.Name,
		Generation: ks.Generation,
		Cipher:     encryptedCipher,
		KeyID:      key.id,
		Nonce:      base64.StdEncoding.EncodeToString(nonce),
		Ciphertext: base64.StdEncoding.EncodeToString(sealed),
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encrypting key set %q: %w", ks.Name, err)
	}
	return append(data, '\n'), nil
}

// Decode implements Codec. A document that is not encrypted, was tampered
// with, or was encrypted under another name or with an unknown key is
// ErrCorrupt: it is never silently accepted, nor overwritten by a seed.
func (c *EncryptingCodec) Decode(name string, data []byte) (*KeySet, error) {
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, fmt.Errorf("%w: key set %q is not an encrypted document: %v", ErrCorrupt, name, err)
	}
	if env.Cipher != encryptedCipher {
		return nil, fmt.Errorf("%w: key set %q is stored unencrypted (or with cipher %q) while encryption_key is set", ErrCorrupt, name, env.Cipher)
	}
	nonce, nErr := base64.StdEncoding.DecodeString(env.Nonce)
	sealed, cErr := base64.StdEncoding.DecodeString(env.Ciphertext)
	if nErr != nil || cErr != nil {
		return nil, fmt.Errorf("%w: key set %q has a nonce or ciphertext that is not base64", ErrCorrupt, name)
	}
	plaintext, err := c.open(name, env, nonce, sealed)
	if err != nil {
		return nil, err
	}
	ks, err := c.plain.Decode(name, plaintext)
	if err != nil {
		return nil, err
	}
	if ks.Generation != env.Generation {
		return nil, fmt.Errorf("%w: key set %q: envelope generation %d, document generation %d", ErrCorrupt, name, env.Generation, ks.Generation)
	}
	return ks, nil
}

// open decrypts with the key the envelope names, or any key when none
// matches (a key id is a hint, not a secret).
func (c *EncryptingCodec) open(name string, env envelope, nonce, sealed []byte) ([]byte, error) {
	ad := additionalData(name, env.Generation)
	for _, wantID := range []bool{true, false} {
		for _, key := range c.keys {
			if (key.id == env.KeyID) != wantID || len(nonce) != key.aead.NonceSize() {
				continue
			}
			if plaintext, err := key.aead.Open(nil, nonce, sealed, ad); err == nil {
				return plaintext, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: key set %q does not decrypt with the configured encryption keys (wrong key, tampered, or stored under another name)", ErrCorrupt, name)
}

var _ Codec = (*EncryptingCodec)(nil)
