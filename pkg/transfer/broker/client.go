package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	maxResponseBytes = 1 << 20
	clientTimeout    = 30 * time.Second
)

// Client is the node plugin's side of the broker API.
type Client struct {
	// URL is the broker's base URL, https only ("https://flashpv-controller.flashpv.svc:9810").
	URL string
	// TokenFile is the projected ServiceAccount token (audience Audience),
	// read on every call: the kubelet rotates it.
	TokenFile string
	// TLS verifies the broker (auth.BrokerClientConfig).
	TLS *tls.Config
	// HTTP, when set, is used instead of a client built from TLS.
	HTTP *http.Client

	once sync.Once
	hc   *http.Client
}

// Certificate asks for a certificate of this node for the public key
// pubDER (PKIX DER) and returns it as PEM.
func (c *Client) Certificate(ctx context.Context, pubDER []byte) ([]byte, error) {
	var resp CertificateResponse
	if err := c.post(ctx, PathCertificate, CertificateRequest{PublicKey: base64.StdEncoding.EncodeToString(pubDER)}, &resp); err != nil {
		return nil, err
	}
	if resp.Certificate == "" {
		return nil, errors.New("broker: answer without a certificate")
	}
	return []byte(resp.Certificate), nil
}

// Grant asks for a capability for one copy onto this node.
func (c *Client) Grant(ctx context.Context, req GrantRequest) (GrantResponse, error) {
	var resp GrantResponse
	if err := c.post(ctx, PathGrant, req, &resp); err != nil {
		return GrantResponse{}, err
	}
	if resp.Capability == "" || resp.SourceNode == "" || resp.Address == "" {
		return GrantResponse{}, errors.New("broker: incomplete grant")
	}
	return resp, nil
}

func (c *Client) client() (*http.Client, error) {
	if c.HTTP != nil {
		return c.HTTP, nil
	}
	if c.TLS == nil {
		return nil, errors.New("broker client: no TLS configuration")
	}
	c.once.Do(func() {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = c.TLS
		tr.Proxy = nil // the broker is a Service inside the cluster
		c.hc = &http.Client{Transport: tr, Timeout: clientTimeout}
	})
	return c.hc, nil
}

func (c *Client) post(ctx context.Context, path string, in, out any) error {
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		// The token must never travel in clear text.
		return fmt.Errorf("broker URL %q: want https://host[:port]", c.URL)
	}
	hc, err := c.client()
	if err != nil {
		return err
	}
	token, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return fmt.Errorf("broker token: %w", err)
	}
	tok := strings.TrimSpace(string(token))
	if tok == "" {
		return fmt.Errorf("broker token %s is empty", c.TokenFile)
	}
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.URL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("broker %s: %w", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return answerError(resp.StatusCode, data)
	}
	if err != nil {
		return fmt.Errorf("broker %s: %w", path, err)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("broker %s: answer: %w", path, err)
	}
	return nil
}

// answerError is the *Error of a non-2xx answer: the body's code, or one
// guessed from the status when the body is not the broker's.
func answerError(status int, body []byte) *Error {
	var e ErrorResponse
	if json.Unmarshal(body, &e) == nil && knownCode(e.Code) {
		return &Error{Code: e.Code, Message: e.Message}
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return &Error{Code: codeOf(status), Message: fmt.Sprintf("HTTP %d: %s", status, msg)}
}
