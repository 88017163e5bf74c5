package iamproxy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"
)

// LoadTokenKeyFile reads the public keys from a PEM file such as the
// kube-apiserver's --service-account-key-file.
func LoadTokenKeyFile(path string) ([]crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read token key file: %w", err)
	}
	keys, err := ParsePublicKeys(b)
	if err != nil {
		return nil, fmt.Errorf("token key file %s: %w", path, err)
	}
	return keys, nil
}

// ParsePublicKeys returns the RSA and ECDSA public keys in PEM data. Like
// kube-apiserver's --service-account-key-file it accepts public keys (PKIX
// or PKCS#1) and private keys (PKCS#1, PKCS#8, SEC 1), whose public halves
// are used; certificates are accepted too. Other blocks (e.g. "EC
// PARAMETERS") are ignored.
func ParsePublicKeys(data []byte) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		key, err := parsePEMBlock(block)
		if err != nil {
			return nil, fmt.Errorf("PEM block %q: %w", block.Type, err)
		}
		if key == nil {
			continue
		}
		switch key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey:
			keys = append(keys, key)
		default:
			return nil, fmt.Errorf("PEM block %q: unsupported key type %T (want RSA or ECDSA)", block.Type, key)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no RSA or ECDSA key found in PEM data")
	}
	return keys, nil
}

func parsePEMBlock(b *pem.Block) (crypto.PublicKey, error) {
	switch b.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(b.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
		if err != nil {
			return nil, err
		}
		return k.Public(), nil
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(b.Bytes)
		if err != nil {
			return nil, err
		}
		return k.Public(), nil
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, err
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
		return signer.Public(), nil
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		return c.PublicKey, nil
	}
	return nil, nil
}

// tokenClaims are the JWT claims STS looks at.
type tokenClaims struct {
	Iss string  `json:"iss"`
	Sub string  `json:"sub"`
	Aud strList `json:"aud"`
	Exp float64 `json:"exp"`
	Nbf float64 `json:"nbf"`
}

// clockSkew is how far in the future a token's nbf may lie, as between a
// cluster and STS.
const clockSkew = time.Minute

// verifyToken checks a compact JWS the way STS checks a web identity token
// against the provider's keys: a supported alg (RS256 as kube-apiserver uses
// for RSA keys, ES256/384/512 for ECDSA keys), a signature that verifies
// against one of keys, an exp in the future, an nbf not in the future, and
// iss and sub present. It returns the claims of a valid token.
func verifyToken(token string, keys []crypto.PublicKey, now time.Time) (tokenClaims, error) {
	var c tokenClaims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c, errors.New("token is not a compact JWS (want header.payload.signature)")
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	if err := decodeSegment(parts[0], &hdr); err != nil {
		return c, fmt.Errorf("token header: %w", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return c, fmt.Errorf("token signature: %w", err)
	}
	if len(keys) == 0 {
		return c, errors.New("no token verification keys configured")
	}
	if err := verifySignature(hdr.Alg, parts[0]+"."+parts[1], sig, keys); err != nil {
		return c, err
	}
	if err := decodeSegment(parts[1], &c); err != nil {
		return c, fmt.Errorf("token payload: %w", err)
	}
	switch {
	case c.Exp == 0:
		return c, errors.New("token has no exp")
	case !now.Before(unixTime(c.Exp)):
		return c, fmt.Errorf("token expired at %s", unixTime(c.Exp).UTC().Format(time.RFC3339))
	case c.Nbf != 0 && unixTime(c.Nbf).After(now.Add(clockSkew)):
		return c, fmt.Errorf("token not valid before %s", unixTime(c.Nbf).UTC().Format(time.RFC3339))
	case c.Iss == "":
		return c, errors.New("token has no iss")
	case c.Sub == "":
		return c, errors.New("token has no sub")
	}
	return c, nil
}

func verifySignature(alg, signed string, sig []byte, keys []crypto.PublicKey) error {
	var hash crypto.Hash
	switch alg {
	case "RS256", "ES256":
		hash = crypto.SHA256
	case "ES384":
		hash = crypto.SHA384
	case "ES512":
		hash = crypto.SHA512
	default:
		return fmt.Errorf("token alg %q not supported (want RS256 or ES256/384/512)", alg)
	}
	h := hash.New()
	h.Write([]byte(signed))
	digest := h.Sum(nil)
	for _, k := range keys {
		switch k := k.(type) {
		case *rsa.PublicKey:
			if alg == "RS256" && rsa.VerifyPKCS1v15(k, hash, digest, sig) == nil {
				return nil
			}
		case *ecdsa.PublicKey:
			// JWS ECDSA signatures are r||s, each as wide as the curve order.
			size := (k.Curve.Params().BitSize + 7) / 8
			if strings.HasPrefix(alg, "ES") && len(sig) == 2*size {
				r := new(big.Int).SetBytes(sig[:size])
				s := new(big.Int).SetBytes(sig[size:])
				if ecdsa.Verify(k, digest, r, s) {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("token signature (%s) does not verify against any of %d configured keys", alg, len(keys))
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func unixTime(sec float64) time.Time {
	return time.Unix(0, int64(sec*float64(time.Second)))
}
