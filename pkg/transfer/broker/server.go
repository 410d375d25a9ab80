package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"
	"unicode"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
)

// Results of a grant request, as Server.Record is told them.
const (
	ResultGranted         = "granted"
	ResultDenied          = "denied" // refused: PermissionDenied, NotFound, InvalidArgument
	ResultUnauthenticated = "unauthenticated"
	ResultError           = "error" // Unavailable or Internal: worth retrying
)

const (
	// maxInFlight bounds concurrent requests: each costs a TokenReview
	// and API reads, so a flood is answered Unavailable instead.
	maxInFlight    = 64
	requestTimeout = 30 * time.Second
	maxIDLength    = 256
)

// Server is the broker: it authenticates the calling node plugin, issues
// certificates for that node, and signs capabilities for the copies that
// Authorize allows. It knows nothing of Kubernetes; the cluster controller
// supplies Authenticate and Authorize.
type Server struct {
	Signer *auth.Signer
	// Authenticate returns the node a bearer token belongs to. Returning an
	// *Error chooses the answer; any other error is Internal.
	Authenticate func(ctx context.Context, token string) (node string, err error)
	// Authorize decides whether node may copy req.Source into req.Target,
	// and returns the source's node and its transfer server's address.
	Authorize func(ctx context.Context, node string, req GrantRequest) (sourceNode, address string, err error)
	// CapabilityTTL is a capability's lifetime (default 5m).
	CapabilityTTL time.Duration
	// CertTTL is a node certificate's lifetime (default 24h).
	CertTTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Record, when set, is told the result (Result*) of every grant
	// request, for metrics.
	Record func(result string)
}

// Handler serves PathCertificate and PathGrant (POST only).
func (s *Server) Handler() http.Handler {
	sem := make(chan struct{}, maxInFlight)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var serve func(context.Context, http.ResponseWriter, *http.Request)
		switch r.URL.Path {
		case PathCertificate:
			serve = s.certificate
		case PathGrant:
			serve = s.grant
		default:
			writeError(w, http.StatusNotFound, Errorf(CodeNotFound, "no such path"))
			return
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, Errorf(CodeInvalid, "method %s: want POST", r.Method))
			return
		}
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
		default:
			writeError(w, http.StatusServiceUnavailable, Errorf(CodeUnavailable, "too many requests in flight"))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		serve(ctx, w, r)
	})
}

func (s *Server) certificate(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	node, err := s.authenticate(ctx, r)
	if err == nil {
		err = s.issue(ctx, w, r, node)
	}
	if err != nil {
		e := answer(w, err)
		if e.Code == CodeInternal {
			klog.ErrorS(err, "Transfer certificate failed", "node", node, "remote", r.RemoteAddr)
		} else {
			klog.InfoS("Transfer certificate refused", "node", node, "remote", r.RemoteAddr, "code", e.Code, "reason", e.Message)
		}
	}
}

// issue answers a certificate for node: the authenticated one, never one
// named by the request.
func (s *Server) issue(_ context.Context, w http.ResponseWriter, r *http.Request, node string) error {
	var req CertificateRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	der, err := base64.StdEncoding.DecodeString(req.PublicKey)
	if err != nil {
		return Errorf(CodeInvalid, "publicKey: not base64: %v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return Errorf(CodeInvalid, "publicKey: not a PKIX public key: %v", err)
	}
	if err := checkKey(pub); err != nil {
		return err
	}
	ttl := s.CertTTL
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	cert, err := s.Signer.IssueNodeCert(node, pub, ttl)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, CertificateResponse{Certificate: string(cert)})
	klog.InfoS("Transfer certificate issued", "node", node, "ttl", ttl)
	return nil
}

func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() >= 2048 {
			return nil
		}
	}
	return Errorf(CodeInvalid, "publicKey: want ECDSA, Ed25519 or RSA of at least 2048 bits")
}

func (s *Server) grant(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	var req GrantRequest
	node, err := s.authenticate(ctx, r)
	var granted GrantResponse
	var c auth.Capability
	if err == nil {
		granted, c, err = s.sign(ctx, w, r, node, &req)
	}
	result := ResultGranted
	kv := []any{"node", node, "claim", klog.KRef(req.ClaimNamespace, req.ClaimName), "kind", req.Kind, "source", req.Source, "target", req.Target}
	if err != nil {
		e := answer(w, err)
		result = resultOf(e.Code)
		if e.Code == CodeInternal {
			klog.ErrorS(err, "Transfer grant failed", append(kv, "remote", r.RemoteAddr, "result", result)...)
		} else {
			klog.InfoS("Transfer grant refused", append(kv, "remote", r.RemoteAddr, "result", result, "code", e.Code, "reason", e.Message)...)
		}
	} else {
		writeJSON(w, http.StatusOK, granted)
		klog.InfoS("Transfer granted", append(kv, "result", result, "sourceNode", granted.SourceNode, "address", granted.Address,
			"capability", c.ID, "expires", time.Unix(c.Expires, 0).UTC())...)
	}
	if s.Record != nil {
		s.Record(result)
	}
}

// sign decodes and checks the request into req, asks Authorize, and
// signs a capability whose target node is the authenticated node.
func (s *Server) sign(ctx context.Context, w http.ResponseWriter, r *http.Request, node string, req *GrantRequest) (GrantResponse, auth.Capability, error) {
	if err := decode(w, r, req); err != nil {
		return GrantResponse{}, auth.Capability{}, err
	}
	if err := validateGrant(*req); err != nil {
		return GrantResponse{}, auth.Capability{}, err
	}
	sourceNode, address, err := s.Authorize(ctx, node, *req)
	if err != nil {
		return GrantResponse{}, auth.Capability{}, err
	}
	switch {
	case sourceNode == "" || address == "":
		return GrantResponse{}, auth.Capability{}, errors.New("authorize returned no source node or address")
	case sourceNode == node:
		return GrantResponse{}, auth.Capability{}, Errorf(CodeDenied, "the source is on this node; copy locally")
	}
	now := time.Now()
	if s.Now != nil {
		now = s.Now()
	}
	ttl := s.CapabilityTTL
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	c := auth.Capability{
		ID: auth.NewCapabilityID(), Kind: req.Kind, Source: req.Source, SourceNode: sourceNode,
		TargetNode: node, Target: req.Target, IssuedAt: now.Unix(), Expires: now.Add(ttl).Unix(),
	}
	token, err := s.Signer.Sign(c)
	if err != nil {
		return GrantResponse{}, auth.Capability{}, err
	}
	return GrantResponse{Capability: token, SourceNode: sourceNode, Address: address}, c, nil
}

func resultOf(code string) string {
	switch code {
	case CodeUnauthenticated:
		return ResultUnauthenticated
	case CodeDenied, CodeNotFound, CodeInvalid:
		return ResultDenied
	default:
		return ResultError
	}
}

func (s *Server) authenticate(ctx context.Context, r *http.Request) (string, error) {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", Errorf(CodeUnauthenticated, "a bearer token is required")
	}
	node, err := s.Authenticate(ctx, token)
	if err != nil {
		return "", err
	}
	if node == "" {
		return "", errors.New("authenticate returned no node")
	}
	return node, nil
}

// decode reads one JSON object of at most MaxRequestBytes into v,
// refusing unknown fields and trailing data.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = terr
			if err == nil {
				err = errors.New("trailing data after the JSON object")
			}
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooBig):
		return Errorf(CodeInvalid, "request body over %d bytes", MaxRequestBytes)
	default:
		return Errorf(CodeInvalid, "request body: %v", err)
	}
}

var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// validateGrant checks the fields' shapes; whether they make sense
// together is Authorize's business.
func validateGrant(req GrantRequest) error {
	if req.Kind != KindSnapshot && req.Kind != KindVolume {
		return Errorf(CodeInvalid, "kind: want %q or %q", KindSnapshot, KindVolume)
	}
	if err := checkID("source", req.Source); err != nil {
		return err
	}
	if err := checkID("target", req.Target); err != nil {
		return err
	}
	if len(req.ClaimNamespace) > 63 || !dnsLabel.MatchString(req.ClaimNamespace) {
		return Errorf(CodeInvalid, "claimNamespace: not a namespace name")
	}
	if len(req.ClaimName) > 253 || !dnsSubdomain.MatchString(req.ClaimName) {
		return Errorf(CodeInvalid, "claimName: not a claim name")
	}
	return nil
}

func checkID(field, v string) error {
	if v == "" || len(v) > maxIDLength {
		return Errorf(CodeInvalid, "%s: want 1 to %d bytes", field, maxIDLength)
	}
	if strings.IndexFunc(v, func(r rune) bool { return r == unicode.ReplacementChar || !unicode.IsPrint(r) }) >= 0 {
		return Errorf(CodeInvalid, "%s: unprintable characters", field)
	}
	return nil
}

// answer writes err's answer and returns it as an *Error: an *Error with
// a known code as it is, anything else as Internal with a generic message
// (the details go to the log only).
func answer(w http.ResponseWriter, err error) *Error {
	var e *Error
	if !errors.As(err, &e) || !knownCode(e.Code) {
		e = Errorf(CodeInternal, "internal error; see the controller's log")
	}
	if e.Code == CodeUnauthenticated {
		w.Header().Set("WWW-Authenticate", `Bearer realm="flashpv"`)
	}
	writeError(w, httpStatus(e.Code), e)
	return e
}

func writeError(w http.ResponseWriter, status int, e *Error) {
	writeJSON(w, status, ErrorResponse{Code: e.Code, Message: e.Message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		klog.V(2).InfoS("Writing a broker answer", "err", err)
	}
}
