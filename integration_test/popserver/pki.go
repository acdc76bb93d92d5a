package popserver

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// PKI is a throwaway certificate authority for the tests: it issues the
// servers' certificates (for 127.0.0.1) and clients' certificates.
type PKI struct {
	// CAPEM is the CA certificate, PEM-encoded, for the clients' and
	// the servers' trust stores.
	CAPEM []byte
	// Pool holds the CA certificate.
	Pool *x509.CertPool

	ca  *x509.Certificate
	key crypto.Signer
}

// NewPKI makes a CA valid for a day.
func NewPKI() (*PKI, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "popserver test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("popserver: CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &PKI{CAPEM: pemBlock("CERTIFICATE", der), Pool: pool, ca: ca, key: key}, nil
}

// Issued is a certificate the PKI issued, with its key.
type Issued struct {
	// Cert is ready for a tls.Config.
	Cert tls.Certificate
	// CertPEM and KeyPEM are the certificate and its PKCS #8 key.
	CertPEM, KeyPEM []byte
}

// ServerCert issues a certificate for 127.0.0.1.
func (p *PKI) ServerCert() (Issued, error) {
	return p.issue(&x509.Certificate{
		Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// ClientCert issues a client certificate whose subject's common name is
// commonName (RFC 8705 section 2.1: the token endpoint identifies the
// client by its subject).
func (p *PKI) ClientCert(commonName string) (Issued, error) {
	return p.issue(&x509.Certificate{
		Subject: pkix.Name{CommonName: commonName}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func (p *PKI) issue(tmpl *x509.Certificate) (Issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Issued{}, err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.key)
	if err != nil {
		return Issued{}, fmt.Errorf("popserver: certificate for %s: %w", tmpl.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Issued{}, err
	}
	certPEM, keyPEM := pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return Issued{}, err
	}
	return Issued{Cert: cert, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Thumbprint is a certificate's x5t#S256 (RFC 8705 section 3.1): the
// base64url SHA-256 of its DER encoding.
func Thumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
