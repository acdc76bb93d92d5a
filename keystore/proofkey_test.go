package keystore

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

// A key set's DPoP key (ProofKey) goes from generation to generation: the
// tokens of every generation are bound to it. Next copies it, so that the
// new document shares no memory with the old.
func TestKeySetNextKeepsProofKey(t *testing.T) {
	t.Parallel()
	ks := &KeySet{Name: "a", Generation: 1, Token: Token{}, ProofKey: []byte(`{"kty":"EC","crv":"P-256","d":"secret"}`)}
	next := ks.Next(Token{}, time.Time{}, time.Now())
	if string(next.ProofKey) != string(ks.ProofKey) {
		t.Fatalf("Next().ProofKey = %s; want %s", next.ProofKey, ks.ProofKey)
	}
	next.ProofKey[0] = 'x'
	if ks.ProofKey[0] != '{' {
		t.Errorf("Next().ProofKey shares its bytes with the previous generation's")
	}
}

// With encryption, the proof key is sealed with the rest of the document,
// and comes back whole.
func TestEncryptionSealsProofKey(t *testing.T) {
	t.Parallel()
	codec, err := NewEncryptingCodec(base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	ks := &KeySet{Name: "a", Generation: 1, Token: Token{}, ProofKey: []byte(`{"kty":"EC","crv":"P-256","d":"dpop-private-part"}`)}
	ks.Token.SetString(FieldRefreshToken, "rt")
	data, err := codec.Encode(ks)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "dpop-private-part") || strings.Contains(string(data), "proof_key") {
		t.Errorf("encrypted document shows the proof key: %s", data)
	}
	got, err := codec.Decode("a", data)
	if err != nil || !strings.Contains(string(got.ProofKey), "dpop-private-part") {
		t.Errorf("Decode() = %v, proof key %s; want it back", err, got.ProofKey)
	}
}
