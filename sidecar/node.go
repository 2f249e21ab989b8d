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
	"os"
	"strings"
	"sync"
	"time"

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
	creds credentials
}

func newNodeClient(timeout time.Duration) *nodeClient {
	// A transport of its own, so that close drops only its own idle
	// connections; many pushes in parallel to one node reuse them.
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return &nodeClient{http: &http.Client{Timeout: timeout, Transport: t}}
}

// close drops the idle connections to the node.
func (n *nodeClient) close() { n.http.CloseIdleConnections() }

// credentials are the node API's, read from the configured files.
type credentials struct {
	cfg      NodeConfig // the settings they were read for
	readAt   time.Time
	username string
	password string
	cookie   string
	err      error // reading a file failed
}

// credsMaxAge is how long credentials read from their files are used before
// the files are read again: openbazaar-go writes a new cookie at every
// start, and an operator may rotate the password.
const credsMaxAge = 5 * time.Second

// cookieName is openbazaar-go's authentication cookie.
const cookieName = "OpenBazaar_Auth_Cookie"

// credentialsFor returns the credentials for cfg, reading their files again
// when they are older than credsMaxAge, or when fresh is set (the node
// answered 401 or 403: it may have a new cookie).
func (n *nodeClient) credentialsFor(cfg NodeConfig, fresh bool) credentials {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.creds
	if !fresh && c.cfg == cfg && time.Since(c.readAt) < credsMaxAge {
		return c
	}
	c = credentials{cfg: cfg, readAt: time.Now(), username: cfg.Username}
	if cfg.PasswordFile != "" {
		b, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			c.err = fmt.Errorf("node.password_file: %w", err)
		}
		c.password = strings.TrimRight(string(b), "\r\n")
	}
	if cfg.CookieFile != "" && c.err == nil {
		b, err := os.ReadFile(cfg.CookieFile)
		if err != nil {
			c.err = fmt.Errorf("node.cookie_file: %w", err)
		}
		c.cookie = parseCookieFile(b)
		if c.err == nil && c.cookie == "" {
			c.err = fmt.Errorf("node.cookie_file %s: is empty: point it at the .cookie file in openbazaar-go's data directory", cfg.CookieFile)
		}
	}
	n.creds = c
	return c
}

// parseCookieFile reads openbazaar-go's cookie file: one line,
// "OpenBazaar_Auth_Cookie=<value>". A file holding the bare value works too.
func parseCookieFile(b []byte) string {
	s := strings.TrimSpace(string(b))
	if v, ok := strings.CutPrefix(s, cookieName+"="); ok {
		return strings.TrimSpace(v)
	}
	return s
}

func (c credentials) apply(req *http.Request) {
	if c.username != "" || c.password != "" {
		req.SetBasicAuth(c.username, c.password)
	}
	if c.cookie != "" {
		req.AddCookie(&http.Cookie{Name: cookieName, Value: c.cookie})
	}
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
	err = n.postOnce(ctx, n.credentialsFor(cfg, false), url, b, out)
	var ne *nodeError
	if errors.As(err, &ne) && (ne.Status == http.StatusUnauthorized || ne.Status == http.StatusForbidden) && (cfg.CookieFile != "" || cfg.PasswordFile != "") {
		// The node may have started again with a new cookie: read the
		// files again for the next call (this one counts as failed).
		n.credentialsFor(cfg, true)
	}
	return err
}

func (n *nodeClient) postOnce(ctx context.Context, creds credentials, url string, b []byte, out any) error {
	target := url
	url = redacted(url) // from here on, url is for messages only
	if creds.err != nil {
		return fmt.Errorf("POST %s: credentials: %w", url, creds.err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	creds.apply(req)
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
