package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// tokenPrefix versions the token format; the signature covers it.
const tokenPrefix = "v1."

// Capability authorizes one transfer of a snapshot or volume from one node
// to a new volume on another, for a short time.
type Capability struct {
	ID     string `json:"id"` // random 128-bit hex, unique per grant
	KeyID  string `json:"kid"`
	Kind   string `json:"kind"`   // "snapshot", "volume" or KindDelta
	Source string `json:"source"` // snapshot or volume ID
	// Base is a delta's snapshot: the capability opens the volume Source
	// as it differs from Base (KindDelta), and nothing else. Absent from
	// the other kinds, and from capabilities made before deltas.
	Base       string `json:"base,omitempty"`
	SourceNode string `json:"sourceNode"`
	TargetNode string `json:"targetNode"`
	Target     string `json:"target"` // the new volume's name
	IssuedAt   int64  `json:"iat"`    // unix seconds
	Expires    int64  `json:"exp"`    // unix seconds
}

// KindDelta is the kind of a capability to read a volume as it differs
// from a snapshot of it (Base), for a move's catch-up.
const KindDelta = "delta"

// NewCapabilityID returns a random 128-bit ID, hex.
func NewCapabilityID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// Sign returns c, signed by s, as a token: "v1." + base64url(JSON) + "." +
// base64url(ed25519 signature of everything before the last dot). It sets
// c.KeyID, and refuses a capability Verify would refuse whatever the time.
func (s *Signer) Sign(c Capability) (string, error) {
	c.KeyID = s.id
	if err := c.check(); err != nil {
		return "", fmt.Errorf("refusing to sign: %w", err)
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	token := s.signPayload(payload)
	if len(token) > MaxTokenBytes {
		return "", fmt.Errorf("refusing to sign: %w: token of %d bytes, more than %d", ErrForged, len(token), MaxTokenBytes)
	}
	return token, nil
}

func (s *Signer) signPayload(payload []byte) string {
	signed := tokenPrefix + base64.RawURLEncoding.EncodeToString(payload)
	sig := ed25519.Sign(s.key, []byte(signed))
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// Verify returns the capability of token if a trusted key signed it and it
// is valid at now. Errors wrap ErrForged or ErrExpired.
func (t *Trust) Verify(token string, now time.Time) (Capability, error) {
	c, err := t.verifySignature(token)
	if err != nil {
		return Capability{}, err
	}
	if err := c.check(); err != nil {
		return Capability{}, err
	}
	if err := c.checkTime(now); err != nil {
		return Capability{}, err
	}
	return c, nil
}

// verifySignature decodes token and checks its signature, nothing more.
func (t *Trust) verifySignature(token string) (Capability, error) {
	var c Capability
	if len(token) > MaxTokenBytes {
		return c, fmt.Errorf("%w: token of %d bytes, more than %d", ErrForged, len(token), MaxTokenBytes)
	}
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return c, fmt.Errorf("%w: not a %s token", ErrForged, strings.TrimSuffix(tokenPrefix, "."))
	}
	payloadB64, sigB64, ok := strings.Cut(rest, ".")
	// base64 decoders skip newlines; refusing everything outside the
	// alphabet keeps one capability to one token.
	if !ok || !isBase64URL(payloadB64) || !isBase64URL(sigB64) {
		return c, fmt.Errorf("%w: token is not v1.<payload>.<signature>", ErrForged)
	}
	b64 := base64.RawURLEncoding.Strict()
	payload, err := b64.DecodeString(payloadB64)
	if err != nil {
		return c, fmt.Errorf("%w: payload: %v", ErrForged, err)
	}
	sig, err := b64.DecodeString(sigB64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return c, fmt.Errorf("%w: signature is not an ed25519 signature", ErrForged)
	}
	if err := decodeStrict(payload, &c); err != nil {
		return Capability{}, fmt.Errorf("%w: payload: %v", ErrForged, err)
	}
	key, ok := t.keys[c.KeyID]
	if !ok {
		return Capability{}, fmt.Errorf("%w: signed by unknown key %q", ErrForged, c.KeyID)
	}
	if !ed25519.Verify(key, []byte(token[:len(tokenPrefix)+len(payloadB64)]), sig) {
		return Capability{}, fmt.Errorf("%w: bad signature", ErrForged)
	}
	return c, nil
}

// decodeStrict decodes one JSON object with only Capability's fields.
func decodeStrict(data []byte, c *Capability) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

func isBase64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if (b < 'A' || b > 'Z') && (b < 'a' || b > 'z') && (b < '0' || b > '9') && b != '-' && b != '_' {
			return false
		}
	}
	return s != ""
}

// check refuses a capability that is incomplete, or valid at no time or
// for longer than anyone issues.
func (c Capability) check() error {
	for _, f := range []struct{ name, value string }{
		{"id", c.ID}, {"kind", c.Kind}, {"source", c.Source},
		{"sourceNode", c.SourceNode}, {"targetNode", c.TargetNode}, {"target", c.Target},
	} {
		if f.value == "" {
			return fmt.Errorf("%w: no %s", ErrForged, f.name)
		}
	}
	if (c.Kind == KindDelta) != (c.Base != "") {
		return fmt.Errorf("%w: a %s capability with base %q", ErrForged, c.Kind, c.Base)
	}
	if c.Expires <= c.IssuedAt {
		return fmt.Errorf("%w: expires (%d) before it was issued (%d)", ErrExpired, c.Expires, c.IssuedAt)
	}
	if lifetime := c.Expires - c.IssuedAt; lifetime > int64(MaxLifetime/time.Second) {
		return fmt.Errorf("%w: lifetime of %ds, more than %v", ErrExpired, lifetime, MaxLifetime)
	}
	return nil
}

func (c Capability) checkTime(now time.Time) error {
	if time.Unix(c.IssuedAt, 0).After(now.Add(ClockSkew)) {
		return fmt.Errorf("%w: issued at %s, in the future", ErrExpired, time.Unix(c.IssuedAt, 0).UTC().Format(time.RFC3339))
	}
	if now.After(time.Unix(c.Expires, 0)) {
		return fmt.Errorf("%w: expired at %s", ErrExpired, time.Unix(c.Expires, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// Authorize checks a verified capability on the source side: it must name
// this node as source, peerNode (from the client's certificate) as target,
// and the kind and source asked for.
func Authorize(c Capability, thisNode, peerNode, kind, source string) error {
	if thisNode == "" || c.SourceNode != thisNode {
		return fmt.Errorf("%w: source node is %q, this is %q", ErrWrongNode, c.SourceNode, thisNode)
	}
	if peerNode == "" || c.TargetNode != peerNode {
		return fmt.Errorf("%w: target node is %q, the peer is %q", ErrWrongNode, c.TargetNode, peerNode)
	}
	if kind == "" || source == "" || c.Kind != kind || c.Source != source {
		return fmt.Errorf("%w: capability is for %s %q, asked for %s %q", ErrWrongSource, c.Kind, c.Source, kind, source)
	}
	return nil
}

// AuthorizeDelta is Authorize for a delta of volume against base.
func AuthorizeDelta(c Capability, thisNode, peerNode, volume, base string) error {
	if err := Authorize(c, thisNode, peerNode, KindDelta, volume); err != nil {
		return err
	}
	if base == "" || c.Base != base {
		return fmt.Errorf("%w: capability is for the delta against %q, asked against %q", ErrWrongSource, c.Base, base)
	}
	return nil
}
