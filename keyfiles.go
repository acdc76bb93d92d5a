package oauth2upstream

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// readPEM reads the PEM that an option gives as a file's path or as the
// PEM itself: value is the option after placeholder replacement, raw the
// option as configured. A value that came from a placeholder may be a key
// gone wrong (base64 without its PEM lines, say), so errors quote raw,
// never value, when the two differ.
func readPEM(option, raw, value string) ([]byte, error) {
	if strings.Contains(value, "-----BEGIN ") {
		return []byte(value), nil
	}
	shown := raw // a path written in the configuration, or a placeholder
	if strings.ContainsAny(value, "\r\n") {
		if raw == value {
			shown = "(given inline)"
		}
		return nil, fmt.Errorf("%s %s: neither PEM (no -----BEGIN line) nor a file's path", option, shown)
	}
	data, err := os.ReadFile(value)
	if err != nil {
		var pathErr *os.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err // the path is shown once, as configured
		}
		return nil, fmt.Errorf("%s %s: reading the PEM file: %v", option, shown, err)
	}
	return data, nil
}

// loadPrivateKey reads the PEM private key that an option gives as a
// file's path or as the PEM itself (see readPEM).
func loadPrivateKey(option, raw, value string) (crypto.Signer, error) {
	data, err := readPEM(option, raw, value)
	if err != nil {
		return nil, err
	}
	key, err := credential.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", option, err)
	}
	return key, nil
}

// loadCertificates reads the PEM certificate chain (leaf first) that an
// option gives as a file's path or as the PEM itself (see readPEM): the
// DER of each certificate, and the leaf parsed.
func loadCertificates(option, raw, value string) ([][]byte, *x509.Certificate, error) {
	certPEM, err := readPEM(option, raw, value)
	if err != nil {
		return nil, nil, err
	}
	var chain [][]byte
	for rest := certPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			chain = append(chain, block.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, nil, fmt.Errorf("%s: no CERTIFICATE block in the PEM", option)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, nil, fmt.Errorf("%s: the first certificate does not parse: %v", option, err)
	}
	return chain, leaf, nil
}

// loadClientCertificate reads client_certificate (a PEM chain, leaf first)
// and client_certificate_key, and checks that the key is the leaf's.
func loadClientCertificate(rawCert, cert, rawKey, key string) (tls.Certificate, error) {
	chain, leaf, err := loadCertificates("client_certificate", rawCert, cert)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := readPEM("client_certificate_key", rawKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	signer, err := credential.ParsePrivateKey(keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("client_certificate_key: %w", err)
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(signer.Public()) {
		return tls.Certificate{}, fmt.Errorf("client_certificate: the certificate (subject %q) does not match client_certificate_key: they are not a pair",
			leaf.Subject.String())
	}
	return tls.Certificate{Certificate: chain, PrivateKey: signer, Leaf: leaf}, nil
}
