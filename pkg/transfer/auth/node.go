package auth

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// maxNodeName is the longest DNS-1123 subdomain, hence node name.
const maxNodeName = 253

// NodeOf returns the node a leaf certificate names: its one URI SAN,
// flashpv-node://<node>, whose node the subject CN must repeat. It does not
// check who issued the certificate.
func NodeOf(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: no certificate", ErrUntrustedPeer)
	}
	if len(cert.URIs) != 1 {
		return "", fmt.Errorf("%w: certificate has %d URI SANs, want one %s:// URI",
			ErrUntrustedPeer, len(cert.URIs), NodeURIScheme)
	}
	u := cert.URIs[0]
	node := u.Host
	// The round trip refuses ports, paths, user info, queries and the like.
	if u.Scheme != NodeURIScheme || !validNodeName(node) || u.String() != nodeURI(node).String() {
		return "", fmt.Errorf("%w: URI SAN %q does not name a node", ErrUntrustedPeer, u)
	}
	if cert.Subject.CommonName != node {
		return "", fmt.Errorf("%w: certificate CN %q disagrees with its node %q",
			ErrUntrustedPeer, cert.Subject.CommonName, node)
	}
	return node, nil
}

// PeerNode returns the node the TLS peer's certificate names. It is only
// meaningful on a connection whose handshake verified that certificate, as
// ServerConfig and ClientConfig do.
func PeerNode(cs tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", fmt.Errorf("%w: peer sent no certificate", ErrUntrustedPeer)
	}
	return NodeOf(cs.PeerCertificates[0])
}

func nodeURI(node string) *url.URL {
	return &url.URL{Scheme: NodeURIScheme, Host: node}
}

// validNodeName reports whether s is a DNS-1123 subdomain, as Kubernetes
// node names are: dot-separated labels of lowercase letters, digits and
// inner hyphens, at most 253 characters in all.
func validNodeName(s string) bool {
	if s == "" || len(s) > maxNodeName {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
				return false
			}
		}
	}
	return true
}
