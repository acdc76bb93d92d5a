package authserver

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"time"

	josev3 "github.com/go-jose/go-jose/v3"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/ory/fosite"
	"github.com/ory/fosite/storage"
)

// AuthMethodPrivateKeyJWT is the client authentication of RFC 7523 section
// 2.2: a client assertion signed with the client's key (Client.Key).
const AuthMethodPrivateKeyJWT = "private_key_jwt"

// GrantJWTBearer is the grant_type of RFC 7523 section 2.1: an assertion
// signed by a trusted issuer (Config.JWTIssuers) is the grant.
const GrantJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// clientAssertionType is the client_assertion_type of private_key_jwt.
const clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// JWTIssuer is a key trusted to sign jwt-bearer grant assertions for one
// subject, as a provider registers a connected app's certificate
// (Salesforce) or a service account's key (Google).
type JWTIssuer struct {
	// Issuer and Subject are the iss and sub the assertions must carry.
	Issuer, Subject string
	// Key is the issuer's public key; KeyID names it (required: fosite
	// looks a key's scopes up by it).
	Key   crypto.PublicKey
	KeyID string
	// Scopes the assertions may ask for. Default: DefaultScopes.
	Scopes []string
}

// registerIssuers trusts issuers in store, before the server serves.
func registerIssuers(store *tokenStore, issuers []JWTIssuer) error {
	for _, iss := range issuers {
		if iss.Issuer == "" || iss.Subject == "" || iss.Key == nil || iss.KeyID == "" {
			return fmt.Errorf("authserver: JWT issuer %q needs an issuer, a subject, a key and a key id", iss.Issuer)
		}
		scopes := iss.Scopes
		if len(scopes) == 0 {
			scopes = DefaultScopes
		}
		keys, ok := store.IssuerPublicKeys[iss.Issuer]
		if !ok {
			keys = storage.IssuerPublicKeys{Issuer: iss.Issuer, KeysBySub: map[string]storage.SubjectPublicKeys{}}
		}
		sub, ok := keys.KeysBySub[iss.Subject]
		if !ok {
			sub = storage.SubjectPublicKeys{Subject: iss.Subject, Keys: map[string]storage.PublicKeyScopes{}}
		}
		sub.Keys[iss.KeyID] = storage.PublicKeyScopes{
			Key:    &josev3.JSONWebKey{Key: iss.Key, KeyID: iss.KeyID, Use: "sig", Algorithm: keyAlg(iss.Key)},
			Scopes: scopes,
		}
		keys.KeysBySub[iss.Subject] = sub
		store.IssuerPublicKeys[iss.Issuer] = keys
	}
	return nil
}

// configureJWTClient registers the public half of a private_key_jwt
// client's key: fosite then verifies its client assertions, RS256 for an
// RSA key and ES256 for an EC key.
func configureJWTClient(client *fosite.DefaultOpenIDConnectClient, c Client) error {
	if c.Key == nil {
		return fmt.Errorf("authserver: client %q authenticates with %s and needs a Key", c.ID, AuthMethodPrivateKeyJWT)
	}
	alg := keyAlg(c.Key.Public())
	client.JSONWebKeys = &josev3.JSONWebKeySet{Keys: []josev3.JSONWebKey{
		{Key: c.Key.Public(), KeyID: ClientKeyID(c.ID), Use: "sig", Algorithm: alg},
	}}
	client.TokenEndpointAuthSigningAlgorithm = alg
	return nil
}

// ClientKeyID is the kid under which a private_key_jwt client's key is
// registered; an assertion without a kid is checked against it too.
func ClientKeyID(clientID string) string { return clientID + "-key" }

func keyAlg(pub crypto.PublicKey) string {
	if _, ok := pub.(*ecdsa.PublicKey); ok {
		return string(jose.ES256)
	}
	return string(jose.RS256)
}

// clientAssertion signs a private_key_jwt client assertion for c at
// tokenURL (for a client_secret_jwt client, HS256 with its secret), as the
// client does: Seed's code exchange authenticates so.
func clientAssertion(c Client, tokenURL string) (url.Values, error) {
	key := jose.SigningKey{Algorithm: jose.HS256, Key: []byte(c.Secret)}
	if c.AuthMethod != AuthMethodSecretJWT {
		key = jose.SigningKey{Algorithm: jose.SignatureAlgorithm(keyAlg(c.Key.Public())), Key: c.Key}
	}
	signer, err := jose.NewSigner(key, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return nil, err
	}
	now := time.Now()
	assertion, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: c.ID, Subject: c.ID, Audience: jwt.Audience{tokenURL}, ID: hex.EncodeToString(jti),
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Minute)),
	}).Serialize()
	if err != nil {
		return nil, err
	}
	return url.Values{"client_id": {c.ID}, "client_assertion_type": {clientAssertionType}, "client_assertion": {assertion}}, nil
}

// reserveTokenListener listens on a loopback port for the token endpoint
// before it serves: fosite checks assertion audiences against the token
// URL, which its configuration must hold before any request can read it.
// The listener is kept, not closed and bound again, so that no parallel
// test can take the port in between.
func reserveTokenListener() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("authserver: reserve a port: %w", err)
	}
	return ln, nil
}
