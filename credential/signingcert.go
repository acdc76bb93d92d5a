package credential

import (
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// Thumbprint headers that name a signing key's certificate in the
// assertions it signs (NewCertificateSigner).
const (
	// ThumbprintSHA256 sends x5t#S256, the base64url SHA-256 digest of
	// the certificate's DER (RFC 7515 section 4.1.8). Microsoft Entra's
	// certificate credentials ask for it, with PS256:
	// https://learn.microsoft.com/entra/identity-platform/certificate-credentials
	ThumbprintSHA256 = "x5t#S256"
	// ThumbprintSHA1 sends x5t, the SHA-1 digest (RFC 7515 section
	// 4.1.7): the header of Entra's earlier guidance (with RS256,
	// https://learn.microsoft.com/previous-versions/azure/active-directory/develop/certificate-credentials),
	// for a provider that reads no other.
	ThumbprintSHA1 = "x5t"
	// ThumbprintBoth sends both headers.
	ThumbprintBoth = "both"
)

// Thumbprints are the values of NewCertificateSigner's thumbprint.
var Thumbprints = []string{ThumbprintSHA256, ThumbprintSHA1, ThumbprintBoth}

// NewCertificateSigner is NewSigner for a key that the provider knows by
// its certificate, as Entra does: every assertion it signs names cert in
// the header that thumbprint says (ThumbprintSHA256 when empty), beside
// the kid when keyID is set. cert must hold key's public key: a
// certificate of another key would name a key the assertion is not
// signed with, and the provider would refuse every grant.
func NewCertificateSigner(key crypto.Signer, alg, keyID string, cert *x509.Certificate, thumbprint string) (*Signer, error) {
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("the certificate (subject %q) does not hold the signing key's public key: they are not a pair",
			cert.Subject.String())
	}
	headers, err := thumbprintHeaders(cert.Raw, thumbprint)
	if err != nil {
		return nil, err
	}
	return newKeySigner(key, alg, keyID, headers)
}

// thumbprintHeaders are the headers of thumbprint for the certificate der.
func thumbprintHeaders(der []byte, thumbprint string) (map[jose.HeaderKey]string, error) {
	headers := map[jose.HeaderKey]string{}
	if thumbprint == "" || thumbprint == ThumbprintSHA256 || thumbprint == ThumbprintBoth {
		sum := sha256.Sum256(der)
		headers[ThumbprintSHA256] = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	if thumbprint == ThumbprintSHA1 || thumbprint == ThumbprintBoth {
		sum := sha1.Sum(der) // RFC 7515 section 4.1.7 defines x5t as SHA-1: a name, not a proof
		headers[ThumbprintSHA1] = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	if len(headers) == 0 {
		return nil, errors.New("the thumbprint header must be " + ThumbprintSHA256 + ", " + ThumbprintSHA1 + " or " + ThumbprintBoth)
	}
	return headers, nil
}
