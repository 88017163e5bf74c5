// Package certs holds the serving certificate: a source that reloads cert-manager's Secret mount
// when it rotates, and a generator of self-signed development certificates.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DevOptions describe a development CA and serving pair.
type DevOptions struct {
	Dir      string
	Hosts    []string // DNS names and IP addresses for the serving certificate
	Validity time.Duration
	// CA, when set, signs the serving pair with an existing CA (ca.crt/ca.key in Dir) instead
	// of creating a new one, so a rotated serving certificate is still trusted.
	ReuseCA bool
	// ClientName, when set, also writes a client pair (client.crt, client.key) with that common
	// name, for --client-ca-file and --allowed-client-names (what the apiserver presents when its
	// AdmissionConfiguration gives it a client certificate).
	ClientName string
}

// WriteDev writes Dir/ca.crt, Dir/ca.key, Dir/tls.crt and Dir/tls.key. Keys are ECDSA P-256 and
// written 0600. Files are replaced atomically (write then rename) so a server watching Dir never
// reads half a file.
func WriteDev(o DevOptions) error {
	if len(o.Hosts) == 0 {
		return fmt.Errorf("no hosts given for the serving certificate")
	}
	if o.Validity <= 0 {
		o.Validity = 365 * 24 * time.Hour
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", o.Dir, err)
	}
	now := time.Now()
	var caCert *x509.Certificate
	var caKey *ecdsa.PrivateKey
	if o.ReuseCA {
		var err error
		caCert, caKey, err = readCA(o.Dir)
		if err != nil {
			return err
		}
	} else {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("generating CA key: %w", err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          serial(),
			Subject:               pkix.Name{CommonName: "credential-webhook development CA"},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(o.Validity),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			return fmt.Errorf("signing CA: %w", err)
		}
		caCert, _ = x509.ParseCertificate(der)
		caKey = key
		if err := writePEM(filepath.Join(o.Dir, "ca.crt"), "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		if err := writeKey(filepath.Join(o.Dir, "ca.key"), key); err != nil {
			return err
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating serving key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: o.Hosts[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(o.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range o.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("signing serving certificate: %w", err)
	}
	// Key first, then certificate: a reloader that sees the new certificate with the old key
	// fails to pair them and keeps the old pair until the next poll, which is harmless.
	if err := writeKey(filepath.Join(o.Dir, "tls.key"), key); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(o.Dir, "tls.crt"), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	if o.ClientName == "" {
		return nil
	}
	ckey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating client key: %w", err)
	}
	ctmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: o.ClientName},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(o.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	cder, err := x509.CreateCertificate(rand.Reader, ctmpl, caCert, &ckey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("signing client certificate: %w", err)
	}
	if err := writeKey(filepath.Join(o.Dir, "client.key"), ckey); err != nil {
		return err
	}
	return writePEM(filepath.Join(o.Dir, "client.crt"), "CERTIFICATE", cder, 0o644)
}

// ParseHosts splits a comma-separated host list.
func ParseHosts(s string) []string {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

func readCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, nil, fmt.Errorf("reading CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, nil, fmt.Errorf("reading CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("CA files in %s are not PEM", dir)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing CA: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing CA key: %w", err)
	}
	return cert, key, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding key: %w", err)
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}
