package credential

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Signing algorithms of client assertions and grant assertions (RFC 7518
// section 3.1): the ones Microsoft Entra, Okta, Salesforce and Google
// accept.
const (
	AlgRS256 = "RS256"
	AlgPS256 = "PS256"
	AlgES256 = "ES256"
)

// assertionLifetime is how long a signed assertion is valid after it is
// made. RFC 7523 section 3 asks for a limited window; providers refuse
// more than a few minutes (Entra: 10, Okta: 60, Salesforce: 3), and each
// assertion is used at once, so one minute leaves room only for clock skew.
const assertionLifetime = time.Minute

// minRSABits is the smallest RSA key that signs: RFC 7518 section 3.3
// requires 2048 bits for RS256 and PS256.
const minRSABits = 2048

// Signer signs the assertions of private_key_jwt client authentication and
// of the jwt_bearer grant, with go-jose: RS256, PS256 or ES256. It is safe
// for concurrent use.
type Signer struct {
	alg    jose.SignatureAlgorithm
	signer jose.Signer
}

// ParsePrivateKey reads the first private key of PEM data: PKCS #8
// ("PRIVATE KEY"), PKCS #1 ("RSA PRIVATE KEY") or SEC 1 ("EC PRIVATE
// KEY"). Other blocks (a certificate beside the key) are skipped. Errors
// never quote the data.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	found := false
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		found = true
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the private key is encrypted; store it decrypted (openssl pkey -in <file> -out <file>) and protect the file instead")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("the %s block does not parse: %v", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("the %s block holds a %T, which cannot sign", block.Type, key)
		}
		return signer, nil
	}
	if !found {
		return nil, errors.New("no PEM data: want a PEM private key (-----BEGIN PRIVATE KEY-----)")
	}
	return nil, errors.New("no private key among the PEM blocks (want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")
}

// NewSigner returns a Signer that signs with key using alg (AlgRS256,
// AlgPS256 or AlgES256; "" picks RS256 for an RSA key and ES256 for an EC
// P-256 key) and names keyID in the kid header when it is not empty. A key
// that does not fit the algorithm is an error.
func NewSigner(key crypto.Signer, alg, keyID string) (*Signer, error) {
	return newKeySigner(key, alg, keyID, nil)
}

// newKeySigner is NewSigner with further protected headers.
func newKeySigner(key crypto.Signer, alg, keyID string, headers map[jose.HeaderKey]string) (*Signer, error) {
	if alg == "" {
		alg = defaultAlg(key)
	}
	if err := keyFits(key, alg); err != nil {
		return nil, err
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	for name, value := range headers {
		opts.WithHeader(name, value)
	}
	signer, err := jose.NewSigner(jose.SigningKey{
		Algorithm: jose.SignatureAlgorithm(alg),
		Key:       jose.JSONWebKey{Key: key, KeyID: keyID},
	}, opts)
	if err != nil {
		return nil, fmt.Errorf("signing with %s: %v", alg, err)
	}
	return &Signer{alg: jose.SignatureAlgorithm(alg), signer: signer}, nil
}

// MinSecretJWTBytes is the shortest client secret that signs
// client_secret_jwt assertions. OpenID Connect Core section 9
// (https://openid.net/specs/openid-connect-core-1_0.html#ClientAuthentication)
// keys the HMAC with the octets of the secret's UTF-8 form, and RFC 7518
// section 3.2 (https://www.rfc-editor.org/rfc/rfc7518#section-3.2) says a
// key of at least the hash's size (256 bits for HS256) MUST be used: a
// shorter secret is refused, not warned about (go-jose would refuse to
// sign with it at every grant anyway).
const MinSecretJWTBytes = 32

// NewSecretSigner returns a Signer of client_secret_jwt assertions: HS256
// keyed with secret, which must have at least MinSecretJWTBytes bytes.
// Errors never quote the secret.
func NewSecretSigner(secret string) (*Signer, error) {
	if len(secret) < MinSecretJWTBytes {
		return nil, fmt.Errorf("the client secret is shorter than %d bytes, the least that HS256 may be keyed with (RFC 7518 section 3.2)", MinSecretJWTBytes)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte(secret)},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("signing with HS256: %v", err)
	}
	return &Signer{alg: jose.HS256, signer: signer}, nil
}

// Algorithm returns the signer's JWS algorithm.
func (s *Signer) Algorithm() string { return string(s.alg) }

func defaultAlg(key crypto.Signer) string {
	if _, ok := key.Public().(*ecdsa.PublicKey); ok {
		return AlgES256
	}
	return AlgRS256
}

// keyFits checks that key can sign with alg.
func keyFits(key crypto.Signer, alg string) error {
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		if alg != AlgRS256 && alg != AlgPS256 {
			return fmt.Errorf("an RSA key signs RS256 or PS256, not %s", alg)
		}
		if bits := pub.N.BitLen(); bits < minRSABits {
			return fmt.Errorf("the RSA key has %d bits; %s needs at least %d", bits, alg, minRSABits)
		}
	case *ecdsa.PublicKey:
		if alg != AlgES256 {
			return fmt.Errorf("an EC key signs ES256, not %s", alg)
		}
		if pub.Curve != elliptic.P256() {
			return fmt.Errorf("ES256 needs an EC key on P-256, not %s", pub.Curve.Params().Name)
		}
	default:
		return fmt.Errorf("a %T key signs none of RS256, PS256 and ES256", pub)
	}
	return nil
}

// sign returns the compact serialization of a JWT holding claims and, when
// not nil, the private claims extra.
func (s *Signer) sign(claims jwt.Claims, extra map[string]any) (string, error) {
	builder := jwt.Signed(s.signer).Claims(claims)
	if len(extra) > 0 {
		builder = builder.Claims(extra)
	}
	return builder.Serialize()
}

// assertionClaims are the registered claims of an assertion made at now
// for audience: a unique jti (servers refuse one they saw, RFC 7523
// section 3), iat, and exp assertionLifetime later.
func assertionClaims(issuer, subject, audience string, now time.Time) (jwt.Claims, error) {
	jti, err := newJTI()
	if err != nil {
		return jwt.Claims{}, err
	}
	return jwt.Claims{
		Issuer:   issuer,
		Subject:  subject,
		Audience: jwt.Audience{audience},
		ID:       jti,
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(assertionLifetime)),
	}, nil
}

// newJTI returns 128 random bits, base64url-encoded: a JWT ID that no
// other assertion or proof carries.
func newJTI() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("making a jti: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
