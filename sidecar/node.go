package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"sync"
	"time"

	"courier/internal/nodeauth"
	"courier/upstream"
)

// nodeClient calls the node's endpoints: OFFLINE publish, inbound and sign.
// One call is one HTTP request: the engine owns the one retry policy (a
// durable schedule with capped exponential backoff, across calls and
// restarts), so the node sees exactly the attempts the engine counts.
//
// Every request carries the node API's credentials when configured
// (node.username with node.password_file: HTTP basic auth; node.cookie_file:
// openbazaar-go's OpenBazaar_Auth_Cookie). They are never logged: errors
// name the file, never its content.
type nodeClient struct {
	http *http.Client

	mu    sync.Mutex
	creds *nodeauth.Creds // for the files of the last call's NodeConfig
}

func newNodeClient(timeout time.Duration) *nodeClient {
	// A transport of its own, so that close drops only its own idle
	// connections; many pushes in parallel to one node reuse them.
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	// Never through a proxy from the environment (HTTP_PROXY and the
	// like, which net/http skips only for loopback): the node is on this
	// machine or its network, and the calls carry its API credentials,
	// the sign requests and every message.
	t.Proxy = nil
	return &nodeClient{http: &http.Client{Timeout: timeout, Transport: t}}
}

// close drops the idle connections to the node.
func (n *nodeClient) close() { n.http.CloseIdleConnections() }

// credsFor returns the credentials for cfg's files, made anew when the
// configuration names other files (a live reload), so that nothing read for
// the old ones is used for the new.
func (n *nodeClient) credsFor(cfg NodeConfig) *nodeauth.Creds {
	files := nodeauth.Files{Username: cfg.Username, PasswordFile: cfg.PasswordFile, CookieFile: cfg.CookieFile}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.creds == nil || n.creds.Files() != files {
		n.creds = nodeauth.New("node", files)
	}
	return n.creds
}

// nodeError is an answer from the node that was not 2xx.
type nodeError struct {
	Status int
	Body   string
}

// refused reports whether err is the node's final no to an inbound
// message: 400 or 422 (it cannot open or use it). Every other failure
// (5xx, 401, 403, 404, 405, 408, 429, a timeout, a refused connection) is
// the endpoint failing, and is retried.
func refused(err error) bool {
	var ne *nodeError
	return errors.As(err, &ne) && (ne.Status == http.StatusBadRequest || ne.Status == http.StatusUnprocessableEntity)
}

// endpointFailure reports whether err is the node's answer about its
// endpoint rather than about the message: 401, 403 (credentials), 404
// (the URL), 405 (the method). Every message gets the same, so the
// endpoint is down; trying the next message to tell a message the node
// chokes on from a failing endpoint would only risk offering it ahead of
// the failed one, should the endpoint come back between the two.
func endpointFailure(err error) bool {
	var ne *nodeError
	if !errors.As(err, &ne) {
		return false
	}
	switch ne.Status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed:
		return true
	}
	return false
}

func (e *nodeError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("node answered %d", e.Status)
	}
	return fmt.Sprintf("node answered %d: %s", e.Status, e.Body)
}

// post sends body as JSON to url with the credentials of cfg, and decodes a
// 2xx answer into out, if out is set. One request, no retry.
func (n *nodeClient) post(ctx context.Context, cfg NodeConfig, url string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	creds := n.credsFor(cfg)
	err = n.postOnce(ctx, creds, url, b, out)
	var ne *nodeError
	if errors.As(err, &ne) && (ne.Status == http.StatusUnauthorized || ne.Status == http.StatusForbidden) {
		// The node may have started again with a new cookie: read the
		// files again for the next call (this one counts as failed).
		creds.Stale()
	}
	return err
}

func (n *nodeClient) postOnce(ctx context.Context, creds *nodeauth.Creds, url string, b []byte, out any) error {
	target := url
	url = redacted(url) // from here on, url is for messages only
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if err := creds.Apply(req); err != nil {
		return fmt.Errorf("POST %s: credentials: %w", url, err)
	}
	resp, err := n.http.Do(req)
	if err != nil {
		var ue *neturl.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message repeats the URL, unredacted
		}
		return fmt.Errorf("POST %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16)) // let the connection be reused
		return fmt.Errorf("POST %s: %w", url, &nodeError{Status: resp.StatusCode, Body: string(bytes.TrimSpace(snippet))})
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return fmt.Errorf("POST %s: decode answer: %w", url, err)
	}
	return nil
}

// redacted is u with any password in it replaced by "xxxxx", for messages.
func redacted(u string) string {
	p, err := neturl.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}

// offlineRequest is the body of the node's OFFLINE publish endpoint.
type offlineRequest struct {
	Recipient  string `json:"recipient"`
	Ciphertext []byte `json:"ciphertext"` // base64 by encoding/json: standard, padded
}

// inboundRequest is the body of the node's inbound endpoint.
type inboundRequest struct {
	ID         string    `json:"id"`
	Ciphertext []byte    `json:"ciphertext"`
	Path       string    `json:"path"`
	ReceivedAt time.Time `json:"received_at"`
}

// sign asks the node's sign endpoint (openbazaar-go's /ob/signmessage shape).
func (n *nodeClient) sign(ctx context.Context, cfg NodeConfig, content string) (upstream.Signature, error) {
	var out struct {
		Signature string `json:"signature"`
		PubKey    string `json:"pubkey"`
		PeerID    string `json:"peerId"`
	}
	if err := n.post(ctx, cfg, cfg.SignURL, map[string]string{"content": content}, &out); err != nil {
		return upstream.Signature{}, err
	}
	if out.Signature == "" || out.PubKey == "" || out.PeerID == "" {
		return upstream.Signature{}, errors.New("sign endpoint answer lacks signature, pubkey or peerId")
	}
	return upstream.Signature{Signature: out.Signature, PubKey: out.PubKey, PeerID: out.PeerID}, nil
}
