package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSignVerifyRoundTrip(t *testing.T) {
	s := newTestSigner(t)
	tr := newTestTrust(t, s)
	now := time.Now()
	want := testCapability(now)
	token := mustSign(t, s, want)
	if !strings.HasPrefix(token, "v1.") || strings.Count(token, ".") != 2 || strings.Contains(token, "=") {
		t.Fatalf("token %q is not v1.<payload>.<signature>, unpadded", token)
	}
	got, err := tr.Verify(token, now)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	want.KeyID = s.ID()
	if got != want {
		t.Errorf("Verify = %+v, want %+v", got, want)
	}
}

func TestNewCapabilityID(t *testing.T) {
	a, b := NewCapabilityID(), NewCapabilityID()
	if len(a) != 32 || strings.Trim(a, "0123456789abcdef") != "" {
		t.Errorf("NewCapabilityID = %q, want 32 hex digits", a)
	}
	if a == b {
		t.Errorf("two NewCapabilityID are both %q", a)
	}
}

// reencode returns token with its payload replaced by edit's change of it,
// and the old signature.
func reencode(t *testing.T, token string, edit func(map[string]any)) string {
	t.Helper()
	parts := strings.Split(token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	payload, err = json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + parts[2]
}

// signedJSON signs c (with s's key ID) bypassing Sign's checks, after
// edit's change of its JSON.
func signedJSON(t *testing.T, s *Signer, c Capability, edit func(map[string]any)) string {
	t.Helper()
	c.KeyID = s.ID()
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(m)
	}
	data, err = json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return s.signPayload(data)
}

func TestVerifyForged(t *testing.T) {
	s := newTestSigner(t)
	other := newTestSigner(t)
	tr := newTestTrust(t, s)
	now := time.Now()
	c := testCapability(now)
	good := mustSign(t, s, c)
	without := func(field string) string {
		return signedJSON(t, s, c, func(m map[string]any) { delete(m, field) })
	}
	tests := []struct {
		name  string
		token string
	}{
		{"modified payload", reencode(t, good, func(m map[string]any) { m["source"] = "snap-2" })},
		{"modified signature", good[:len(good)-2] + flip(good[len(good)-2]) + good[len(good)-1:]},
		{"signed by another key under the trusted key's ID", signedJSON(t, other, c, func(m map[string]any) { m["kid"] = s.ID() })},
		{"unknown key ID", mustSign(t, other, c)},
		{"garbage", "garbage"},
		{"empty", ""},
		{"other version", "v2" + strings.TrimPrefix(good, "v1")},
		{"no signature", good[:strings.LastIndex(good, ".")]},
		{"extra part", good + ".AAAA"},
		{"newline in the signature", good[:len(good)-4] + "\n" + good[len(good)-4:]},
		{"short signature", good[:len(good)-8]},
		{"not JSON", s.signPayload([]byte("not json"))},
		{"JSON after the object", s.signPayload(append(mustJSON(t, withKID(c, s)), " {}"...))},
		{"too long", signedJSON(t, s, c, func(m map[string]any) { m["target"] = strings.Repeat("x", MaxTokenBytes) })},
		{"no id", without("id")},
		{"no kind", without("kind")},
		{"no source", without("source")},
		{"no sourceNode", without("sourceNode")},
		{"no targetNode", without("targetNode")},
		{"no target", without("target")},
		{"unknown field", signedJSON(t, s, c, func(m map[string]any) { m["admin"] = true })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tr.Verify(tt.token, now)
			if !errors.Is(err, ErrForged) {
				t.Fatalf("Verify = %v, want ErrForged", err)
			}
			if got != (Capability{}) {
				t.Errorf("Verify returned %+v with its error, want nothing", got)
			}
		})
	}
}

// flip changes a base64url character into another.
func flip(b byte) string {
	if b == 'A' {
		return "B"
	}
	return "A"
}

func TestVerifyTimes(t *testing.T) {
	s := newTestSigner(t)
	tr := newTestTrust(t, s)
	now := time.Now().Truncate(time.Second) // capabilities count in seconds
	tests := []struct {
		name     string
		iat, exp time.Time
		wantErr  error
	}{
		{"valid", now.Add(-time.Minute), now.Add(time.Minute), nil},
		{"expires now", now.Add(-time.Minute), now, nil},
		{"expired", now.Add(-10 * time.Minute), now.Add(-time.Second), ErrExpired},
		{"issued within the clock skew", now.Add(30 * time.Second), now.Add(10 * time.Minute), nil},
		{"issued in the future", now.Add(2 * time.Minute), now.Add(10 * time.Minute), ErrExpired},
		{"lifetime of one hour", now.Add(-time.Minute), now.Add(-time.Minute).Add(MaxLifetime), nil},
		{"too long a lifetime", now.Add(-time.Minute), now.Add(-time.Minute).Add(MaxLifetime + time.Second), ErrExpired},
		{"expires before issued", now.Add(30 * time.Second), now.Add(10 * time.Second), ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testCapability(now)
			c.IssuedAt, c.Expires = tt.iat.Unix(), tt.exp.Unix()
			_, err := tr.Verify(signedJSON(t, s, c, nil), now)
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Errorf("Verify = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestSignRefuses(t *testing.T) {
	s := newTestSigner(t)
	now := time.Now()
	tests := []struct {
		name    string
		edit    func(*Capability)
		wantErr error
	}{
		{"no id", func(c *Capability) { c.ID = "" }, ErrForged},
		{"no target node", func(c *Capability) { c.TargetNode = "" }, ErrForged},
		{"too long", func(c *Capability) { c.Target = strings.Repeat("x", MaxTokenBytes) }, ErrForged},
		{"too long a lifetime", func(c *Capability) { c.Expires = c.IssuedAt + 3601 }, ErrExpired},
		{"no lifetime", func(c *Capability) { c.Expires = c.IssuedAt }, ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testCapability(now)
			tt.edit(&c)
			if _, err := s.Sign(c); !errors.Is(err, tt.wantErr) {
				t.Errorf("Sign = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	c := testCapability(time.Now()) // snapshot snap-1 from node-a to node-b
	tests := []struct {
		name                         string
		thisNode, peer, kind, source string
		wantErr                      error
	}{
		{"allowed", "node-a", "node-b", "snapshot", "snap-1", nil},
		{"wrong source node", "node-c", "node-b", "snapshot", "snap-1", ErrWrongNode},
		{"wrong target node", "node-a", "node-c", "snapshot", "snap-1", ErrWrongNode},
		{"source and target swapped", "node-b", "node-a", "snapshot", "snap-1", ErrWrongNode},
		{"no peer node", "node-a", "", "snapshot", "snap-1", ErrWrongNode},
		{"other snapshot", "node-a", "node-b", "snapshot", "snap-2", ErrWrongSource},
		{"wrong kind", "node-a", "node-b", "volume", "snap-1", ErrWrongSource},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Authorize(c, tt.thisNode, tt.peer, tt.kind, tt.source)
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Errorf("Authorize = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func withKID(c Capability, s *Signer) Capability {
	c.KeyID = s.ID()
	return c
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
