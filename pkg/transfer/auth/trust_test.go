package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTrustTwoCAs(t *testing.T) {
	old, cur, stranger := newTestSigner(t), newTestSigner(t), newTestSigner(t)
	tr := newTestTrust(t, old, cur)
	if tr.Len() != 2 {
		t.Errorf("Len = %d, want 2", tr.Len())
	}
	now := time.Now()
	tests := []struct {
		name    string
		signer  *Signer
		wantErr error
	}{
		{"old key", old, nil},
		{"current key", cur, nil},
		{"untrusted key", stranger, ErrForged},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tr.Verify(mustSign(t, tt.signer, testCapability(now)), now)
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Errorf("Verify = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestNewTrustRefuses(t *testing.T) {
	s := newTestSigner(t)
	leaf, err := s.IssueNodeCert("node-a", s.key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := s.EncodeKey()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pems [][]byte
	}{
		{"nothing", nil},
		{"no PEM", [][]byte{[]byte("garbage")}},
		{"a key", [][]byte{keyPEM}},
		{"CA and key in one file", [][]byte{append(s.CAPEM(), keyPEM...)}},
		{"a leaf", [][]byte{leaf}},
		{"an ECDSA CA", [][]byte{ecdsaCA(t)}},
		{"a CA issued by another", [][]byte{subCA(t, s)}},
		{"a corrupt certificate", [][]byte{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewTrust(tt.pems...); err == nil {
				t.Errorf("NewTrust succeeded, want an error")
			}
		})
	}
}

func ecdsaCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "ecdsa CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// subCA is a CA certificate issued by s, not self-signed.
func subCA(t *testing.T, s *Signer) []byte {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "sub CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca, pub, s.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// configMapDir lays out files as kubelet mounts a ConfigMap: the files in
// a versioned dot-directory, ..data a symlink to it, and each name a
// symlink through ..data. Calling it again swaps the version atomically.
type configMapDir struct {
	t       *testing.T
	dir     string
	version int
}

func (c *configMapDir) write(files map[string][]byte) {
	c.t.Helper()
	c.version++
	ver := "..2026_01_01_00_00_0" + string(rune('0'+c.version))
	if err := os.Mkdir(filepath.Join(c.dir, ver), 0o755); err != nil {
		c.t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(c.dir, ver, name), data, 0o644); err != nil {
			c.t.Fatal(err)
		}
	}
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(ver, tmp); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		c.t.Fatal(err)
	}
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, e := range entries { // names no longer in the ConfigMap go
		if e.Name()[0] != '.' && files[e.Name()] == nil {
			if err := os.Remove(filepath.Join(c.dir, e.Name())); err != nil {
				c.t.Fatal(err)
			}
		}
	}
	for name := range files {
		err := os.Symlink(filepath.Join("..data", name), filepath.Join(c.dir, name))
		if err != nil && !errors.Is(err, os.ErrExist) {
			c.t.Fatal(err)
		}
	}
}

func TestTrustDirRotation(t *testing.T) {
	old, cur := newTestSigner(t), newTestSigner(t)
	cm := &configMapDir{t: t, dir: t.TempDir()}
	cm.write(map[string][]byte{"old.pem": old.CAPEM(), "cur.pem": cur.CAPEM()})
	d := NewTrustDir(cm.dir, 0)
	now := time.Now()
	oldToken := mustSign(t, old, testCapability(now))
	curToken := mustSign(t, cur, testCapability(now))

	tr, err := d.Current()
	if err != nil {
		t.Fatalf("Current: %v", err)
	}
	for _, token := range []string{oldToken, curToken} {
		if _, err := tr.Verify(token, now); err != nil {
			t.Errorf("before the rotation: Verify = %v", err)
		}
	}

	cm.write(map[string][]byte{"cur.pem": cur.CAPEM()})
	tr, err = d.Current()
	if err != nil {
		t.Fatalf("Current: %v", err)
	}
	if _, err := tr.Verify(curToken, now); err != nil {
		t.Errorf("after the rotation, the current key: Verify = %v", err)
	}
	if _, err := tr.Verify(oldToken, now); !errors.Is(err, ErrForged) {
		t.Errorf("after the rotation, the removed key: Verify = %v, want ErrForged", err)
	}
}

func TestTrustDirRefresh(t *testing.T) {
	a, b := newTestSigner(t), newTestSigner(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.pem"), a.CAPEM())
	cached := NewTrustDir(dir, time.Hour)
	fresh := NewTrustDir(dir, 0)
	for _, d := range []*TrustDir{cached, fresh} {
		if _, err := d.Current(); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(dir, "b.pem"), b.CAPEM())
	tests := []struct {
		name string
		d    *TrustDir
		want int
	}{
		{"refresh not due", cached, 1},
		{"refresh 0", fresh, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := tt.d.Current()
			if err != nil {
				t.Fatal(err)
			}
			if tr.Len() != tt.want {
				t.Errorf("Len = %d, want %d", tr.Len(), tt.want)
			}
		})
	}
}

func TestTrustDirFiles(t *testing.T) {
	a, b := newTestSigner(t), newTestSigner(t)
	tests := []struct {
		name    string
		files   map[string][]byte
		wantLen int // 0: an error
	}{
		{"one file", map[string][]byte{"ca.pem": a.CAPEM()}, 1},
		{"two certs in one file", map[string][]byte{"ca.pem": append(a.CAPEM(), b.CAPEM()...)}, 2},
		{"other files ignored", map[string][]byte{"ca.pem": a.CAPEM(), "README": []byte("hi"), "b.crt": b.CAPEM()}, 1},
		{"dot-files ignored", map[string][]byte{"ca.pem": a.CAPEM(), ".b.pem": b.CAPEM()}, 1},
		{"empty", nil, 0},
		{"only other files", map[string][]byte{"b.crt": b.CAPEM()}, 0},
		{"a directory named .pem ignored", map[string][]byte{"ca.pem": a.CAPEM(), "sub.pem/": nil}, 1},
		{"a bad pem file", map[string][]byte{"ca.pem": a.CAPEM(), "bad.pem": []byte("junk")}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range tt.files {
				if dirName, ok := strings.CutSuffix(name, "/"); ok {
					if err := os.Mkdir(filepath.Join(dir, dirName), 0o755); err != nil {
						t.Fatal(err)
					}
					continue
				}
				write(t, filepath.Join(dir, name), data)
			}
			tr, err := NewTrustDir(dir, 0).Current()
			if tt.wantLen == 0 {
				if err == nil {
					t.Errorf("Current succeeded, want an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Current: %v", err)
			}
			if tr.Len() != tt.wantLen {
				t.Errorf("Len = %d, want %d", tr.Len(), tt.wantLen)
			}
		})
	}
	t.Run("the error names a bad file", func(t *testing.T) {
		dir := t.TempDir()
		write(t, filepath.Join(dir, "ca.pem"), a.CAPEM())
		write(t, filepath.Join(dir, "bad.pem"), []byte("junk"))
		if _, err := NewTrustDir(dir, 0).Current(); err == nil || !strings.Contains(err.Error(), "bad.pem") {
			t.Errorf("Current = %v, want an error naming bad.pem", err)
		}
	})
	t.Run("missing directory", func(t *testing.T) {
		if _, err := NewTrustDir(filepath.Join(t.TempDir(), "nope"), 0).Current(); err == nil {
			t.Errorf("Current succeeded, want an error")
		}
	})
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
