package broker

// The broker's HTTP API, spoken between a node plugin (client) and the
// cluster controller (server) over HTTPS. Every request carries the node
// plugin's projected ServiceAccount token as "Authorization: Bearer <token>".

const (
	// PathCertificate issues a node its short-lived transfer certificate.
	PathCertificate = "/v1/certificate"
	// PathGrant hands out a capability for one transfer.
	PathGrant = "/v1/grant"
	// Audience is the audience of the projected token the broker accepts.
	Audience = "flashpv.dev/transfer"
	// MaxRequestBytes bounds a request body.
	MaxRequestBytes = 16 << 10
)

// Source kinds.
const (
	KindSnapshot = "snapshot"
	KindVolume   = "volume"
)

// CertificateRequest asks for a certificate of the calling node for a key
// the node holds.
type CertificateRequest struct {
	// PublicKey is the node's public key, PKIX DER, base64 (std) encoded.
	PublicKey string `json:"publicKey"`
}

// CertificateResponse is the issued certificate.
type CertificateResponse struct {
	// Certificate is the node's leaf certificate, PEM.
	Certificate string `json:"certificate"`
}

// GrantRequest asks to copy a snapshot or volume into a new volume on the
// calling node, for a claim.
type GrantRequest struct {
	Kind   string `json:"kind"`   // KindSnapshot or KindVolume
	Source string `json:"source"` // the snapshot or volume ID
	// Target is the new volume's CSI name (the PV name the provisioner
	// chose: "pvc-<claim UID>").
	Target string `json:"target"`
	// ClaimNamespace and ClaimName name the claim being provisioned (the
	// provisioner's csi.storage.k8s.io/pvc/* parameters).
	ClaimNamespace string `json:"claimNamespace"`
	ClaimName      string `json:"claimName"`
}

// GrantResponse is a capability and where to use it.
type GrantResponse struct {
	Capability string `json:"capability"`
	SourceNode string `json:"sourceNode"`
	// Address is host:port of the source node's transfer server.
	Address string `json:"address"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	// Code is one of the Code* values.
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes, so that the node plugin can answer its caller with the right
// gRPC code.
const (
	CodeUnauthenticated = "Unauthenticated"  // no or bad token
	CodeDenied          = "PermissionDenied" // the claim does not ask for this
	CodeNotFound        = "NotFound"         // no such claim, snapshot, volume
	CodeInvalid         = "InvalidArgument"
	CodeUnavailable     = "Unavailable" // try again later (source node has no server yet...)
	CodeInternal        = "Internal"
)
