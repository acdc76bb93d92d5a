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
)

// SeedlessGrant reports whether the grant makes tokens from the client's
// own credentials, with no refresh token to seed: client_credentials and
// jwt_bearer. A key set of such a grant starts empty.
func SeedlessGrant(grant string) bool {
	return grant == GrantClientCredentials || grant == GrantJWTBearer
}
