package oauth2upstream

import (
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// invalidTokenError is the RFC 6750 section 3.1 error code of a challenge
// that rejects the access token itself: expired, revoked or malformed. A
// new token may cure it; insufficient_scope and invalid_request it cannot.
const invalidTokenError = "invalid_token"

// useDPoPNonceError is the error of a challenge asking for a server's
// nonce (RFC 9449 section 9).
const useDPoPNonceError = "use_dpop_nonce"

// rejectsToken reports whether a response's WWW-Authenticate fields carry
// the auth-param error="invalid_token" in any challenge (Bearer, and DPoP,
// RFC 9449 section 7.1, which uses the same codes).
func rejectsToken(h http.Header) bool {
	return challengeError(h, invalidTokenError)
}

// asksDPoPNonce reports whether a held 401's headers are a resource
// server's request for its nonce (RFC 9449 section 9): a DPoP challenge
// with error="use_dpop_nonce", and a DPoP-Nonce.
func asksDPoPNonce(h http.Header) bool {
	return h.Get("DPoP-Nonce") != "" && challengeError(h, useDPoPNonceError)
}

// challengeError reports whether a response's WWW-Authenticate fields carry
// the auth-param error=code in any challenge.
func challengeError(h http.Header, code string) bool {
	for _, field := range h.Values("WWW-Authenticate") {
		found := false
		eachAuthParam(field, func(name, value string) bool {
			found = strings.EqualFold(name, "error") && value == code
			return !found
		})
		if found {
			return true
		}
	}
	return false
}

// eachAuthParam calls yield with the name and value of every auth-param of
// every challenge in a WWW-Authenticate field value (RFC 9110 section
// 11.6.1: challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ],
// auth-param = token BWS "=" BWS ( token / quoted-string )), the value
// unquoted, until yield returns false. Scheme names and token68 credentials
// are skipped; malformed input ends a parameter where it can, never the
// scan.
func eachAuthParam(field string, yield func(name, value string) bool) {
	i := 0
	for i < len(field) {
		i = skipSeparators(field, i)
		start := i
		for i < len(field) && isToken68Char(field[i]) {
			i++
		}
		if i == start {
			i++ // not a token: skip the character
			continue
		}
		name := field[start:i]
		i = skipSpace(field, i)
		if i >= len(field) || field[i] != '=' {
			continue // an auth-scheme, or a token68 without padding
		}
		i = skipSpace(field, i+1)
		if i >= len(field) || field[i] == '=' || field[i] == ',' {
			for i < len(field) && field[i] == '=' {
				i++ // the padding of a token68
			}
			continue
		}
		var value string
		if field[i] == '"' {
			value, i = readQuoted(field, i+1)
		} else {
			start := i
			for i < len(field) && isToken68Char(field[i]) {
				i++
			}
			value = field[start:i]
		}
		if !yield(name, value) {
			return
		}
	}
}

// readQuoted reads a quoted-string whose opening quote ends before i, and
// returns its content without quoted-pair escapes and the index after the
// closing quote (or the end of s, when it is missing).
func readQuoted(s string, i int) (string, int) {
	var b strings.Builder
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return b.String(), i + 1
		case c == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), i
}

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

func skipSeparators(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == ',') {
		i++
	}
	return i
}

// isToken68Char reports whether c may appear in a token (RFC 9110 section
// 5.6.2's tchar) or a token68 (which adds '/'; its '=' padding is read
// apart).
func isToken68Char(c byte) bool {
	return c == '/' || httpguts.IsTokenRune(rune(c))
}
