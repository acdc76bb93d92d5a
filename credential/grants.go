package credential

// Grants (TokenEndpoint.Grant).
const (
	// GrantRefreshToken spends the key set's refresh token (RFC 6749
	// section 6).
	GrantRefreshToken = "refresh_token"
	// GrantClientCredentials needs no seed (RFC 6749 section 4.4).
	GrantClientCredentials = "client_credentials"
	// GrantJWTBearer presents a signed assertion as the grant (RFC 7523
	// section 2.1), as Salesforce's JWT bearer flow and Google's service
	// accounts do. It needs no seed and no refresh token: a new assertion
	// is granted at expiry or on a trigger status, like client_credentials.
	GrantJWTBearer = "jwt_bearer"
	// GrantPassword sends the resource owner's username and password (RFC
	// 6749 section 4.3), for legacy APIs only: OAuth 2.1 drops it and RFC
	// 9700 section 2.4 says it MUST NOT be used. It needs no seed; a
	// refresh token it issues is kept and spent by later grants, and
	// replaced by a new password grant when it is dead (password.go).
	GrantPassword = "password"
)

// SeedlessGrant reports whether the grant makes tokens from credentials
// the handler holds, with no refresh token to seed: client_credentials,
// jwt_bearer and password. A key set of such a grant starts empty.
func SeedlessGrant(grant string) bool {
	return grant == GrantClientCredentials || grant == GrantJWTBearer || grant == GrantPassword
}
