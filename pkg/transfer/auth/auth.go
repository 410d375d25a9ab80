// Package auth secures node-to-node transfers: the controller's signing key
// (a CA for per-node TLS certificates, and the signer of capabilities that
// authorize one transfer each), the nodes' trust in it, mutual TLS 1.3
// between nodes, and the source node's checks of a capability (signature,
// expiry, nodes, source, replay).
package auth

import (
	"errors"
	"time"
)

// Errors a caller can tell apart with errors.Is.
var (
	// ErrForged: the capability is malformed, or not signed by a trusted key.
	ErrForged = errors.New("capability forged or malformed")
	// ErrExpired: the capability is not valid now (or at any time).
	ErrExpired = errors.New("capability expired or not yet valid")
	// ErrReplayed: the capability was already used.
	ErrReplayed = errors.New("capability already used")
	// ErrWrongNode: the capability names other nodes than this connection's.
	ErrWrongNode = errors.New("capability is for other nodes")
	// ErrWrongSource: the capability is for another snapshot or volume.
	ErrWrongSource = errors.New("capability is for another source")
	// ErrBusy: too many capabilities are live to remember one more.
	ErrBusy = errors.New("too many live capabilities")
	// ErrUntrustedPeer: a TLS peer's certificate is missing, not issued by
	// a trusted CA, or not a certificate of the expected node.
	ErrUntrustedPeer = errors.New("peer certificate not trusted")
	// ErrNoCertificate: a NodeKey has no certificate, or only an expired one.
	ErrNoCertificate = errors.New("no valid node certificate")
)

const (
	// MaxTokenBytes bounds a token; a capability is far smaller, and a
	// bound keeps a flood of large tokens cheap to refuse.
	MaxTokenBytes = 4096
	// MaxLifetime is the longest a capability may live; the controller
	// issues shorter ones, so a longer one is refused.
	MaxLifetime = time.Hour
	// ClockSkew is how far in the future a capability may have been issued,
	// for clocks of controller and node that disagree a little.
	ClockSkew = time.Minute
	// MaxReplayEntries bounds the live capability IDs a Replay remembers.
	MaxReplayEntries = 100000
	// DefaultTrustRefresh is how often a node should re-read its trusted CAs.
	DefaultTrustRefresh = 10 * time.Second
	// NodeURIScheme is the scheme of the URI SAN naming a node.
	NodeURIScheme = "flashpv-node"
)
