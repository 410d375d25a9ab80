package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Both ends of every connection here speak TLS 1.3 only, and verify the
// peer against the trust of the moment (not a pool fixed at start), so
// that a CA rotation applies without a restart.

func tls13() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, MaxVersion: tls.VersionTLS13}
}

// ServerConfig is the transfer server's: it presents getCert's certificate
// and admits only clients with a node certificate or the controller's
// certificate from a trusted CA. Each endpoint then admits one of them.
func ServerConfig(getCert func() (*tls.Certificate, error), trust func() (*Trust, error)) *tls.Config {
	cfg := tls13()
	// Verified in VerifyConnection instead of by ClientCAs, whose pool
	// would be the one of the config's creation.
	cfg.ClientAuth = tls.RequireAnyClientCert
	// No resumption: every connection proves its certificate afresh.
	cfg.SessionTicketsDisabled = true
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return getCert() }
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		leaf, err := verifyPeer(cs, trust, x509.ExtKeyUsageClientAuth, "")
		if err != nil {
			return err
		}
		if IsController(leaf) == nil {
			return nil
		}
		_, err = NodeOf(leaf)
		return err
	}
	return cfg
}

// ClientConfig is the transfer client's: it presents getCert's certificate
// and accepts only a server with wantNode's certificate from a trusted CA.
func ClientConfig(getCert func() (*tls.Certificate, error), trust func() (*Trust, error), wantNode string) *tls.Config {
	cfg := tls13()
	// Node certificates name their node in a URI SAN, not a DNS name, so
	// the standard check cannot be used; VerifyConnection does it all.
	cfg.InsecureSkipVerify = true
	cfg.ServerName = wantNode
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return getCert() }
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		leaf, err := verifyPeer(cs, trust, x509.ExtKeyUsageServerAuth, "")
		if err != nil {
			return err
		}
		node, err := NodeOf(leaf)
		if err != nil {
			return err
		}
		if wantNode == "" || node != wantNode {
			return fmt.Errorf("%w: server is node %q, want %q", ErrUntrustedPeer, node, wantNode)
		}
		return nil
	}
	return cfg
}

// BrokerClientConfig is a node's config for the controller's HTTPS
// endpoint: the server's certificate must be from a trusted CA and be for
// serverName.
func BrokerClientConfig(trust func() (*Trust, error), serverName string) *tls.Config {
	cfg := tls13()
	cfg.ServerName = serverName
	// Verified in VerifyConnection, against the current trust.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		// Without a name, any certificate of the CA would do, a node's too.
		if serverName == "" {
			return fmt.Errorf("%w: no server name to verify", ErrUntrustedPeer)
		}
		_, err := verifyPeer(cs, trust, x509.ExtKeyUsageServerAuth, serverName)
		return err
	}
	return cfg
}

// verifyPeer verifies the peer's leaf certificate: issued directly by a
// CA of the current trust, valid now, for usage and (if not empty) the DNS
// name dnsName. Intermediates are not accepted: the CA issues leaves only.
func verifyPeer(cs tls.ConnectionState, trust func() (*Trust, error), usage x509.ExtKeyUsage, dnsName string) (*x509.Certificate, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, fmt.Errorf("%w: peer sent no certificate", ErrUntrustedPeer)
	}
	t, err := trust()
	if err != nil {
		return nil, fmt.Errorf("loading trusted CAs: %w", err)
	}
	if t == nil {
		return nil, errors.New("no trusted CAs")
	}
	leaf := cs.PeerCertificates[0]
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:       t.pool,
		DNSName:     dnsName,
		CurrentTime: time.Now(),
		KeyUsages:   []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUntrustedPeer, err)
	}
	return leaf, nil
}
