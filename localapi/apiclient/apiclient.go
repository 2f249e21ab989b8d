// Package apiclient is a small Go client for the courier sidecar's local
// API (PROTOCOL.md, "Sidecar local API"): submit a message and follow its
// state, pull and ack inbound messages, read the status and readiness.
//
// It is what the node's side of Courier looks like in Go: the test node
// (devnode), the process-level test harness (internal/cluster) and
// `courier status` use it. It depends on the standard library only, so a
// node can import it without the sidecar.
//
// Every non-2xx answer is returned as an *Error carrying the HTTP status
// and the sidecar's JSON error text ("what is wrong, and what to do").
package apiclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls one sidecar's local API. It is safe for concurrent use.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
}

// Options tune a Client; zero values take the defaults.
type Options struct {
	// Token is sent as "Authorization: Bearer <token>" when set: the
	// sidecar's api.token.
	Token string
	// HTTPClient makes the calls; default: one with a 90 s timeout (above
	// the longest inbox long poll, 60 s).
	HTTPClient *http.Client
}

// maxAnswer bounds what is read of one answer: an inbox page of the
// largest messages fits.
const maxAnswer = 256 << 20

// New returns a client for the API at base: "http://127.0.0.1:4100", or
// just "127.0.0.1:4100".
func New(base string, opts Options) (*Client, error) {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
		return nil, fmt.Errorf("sidecar API address %q: want http://host:port or host:port", base)
	}
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 90 * time.Second}
	}
	return &Client{base: u, token: opts.Token, hc: hc}, nil
}

// URL is the API's base URL.
func (c *Client) URL() string { return c.base.String() }

// Error is an answer other than 2xx: Status is the HTTP status, Message
// the "error" of the sidecar's JSON body (or the body itself when it is not
// one).
type Error struct {
	Method, Path string
	Status       int
	Message      string
}

func (e *Error) Error() string {
	return fmt.Sprintf("sidecar answered %d to %s %s: %s", e.Status, e.Method, e.Path, e.Message)
}

// IsStatus reports whether err is an *Error with HTTP status code.
func IsStatus(err error, code int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == code
}

// Message is a message's state as GET /v1/messages/{id} reports it.
// Attempts counts tries on the current path; LastError says why it is on
// that path, or why it failed.
type Message struct {
	ID        string    `json:"id"`
	Recipient string    `json:"recipient"`
	State     string    `json:"state"` // queued, sending, delivered, handed_off, failed
	Path      string    `json:"path"`  // "", INDIRECT, OFFLINE
	Attempts  int       `json:"attempts"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	LastError string    `json:"last_error"`
}

// Final reports whether the sidecar will not move the message on by itself:
// delivered, handed_off or failed (a new Submit revives a failed one).
func (m Message) Final() bool { return Final(m.State) }

// Final reports whether a message state is final: delivered, handed_off or
// failed.
func Final(state string) bool {
	return state == "delivered" || state == "handed_off" || state == "failed"
}

// Submitted is the answer to Submit.
type Submitted struct {
	ID    string `json:"id"`
	State string `json:"state"`
	// Created is true for a new message (202), false for one the sidecar
	// knew already (200, with its current state).
	Created bool `json:"-"`
}

// Submit posts a message: POST /v1/messages. It returns once the sidecar
// has it durably.
func (c *Client) Submit(ctx context.Context, recipient string, ciphertext []byte) (Submitted, error) {
	body, _ := json.Marshal(map[string]string{ // strings always marshal
		"recipient":  recipient,
		"ciphertext": base64.StdEncoding.EncodeToString(ciphertext),
	})
	var s Submitted
	status, err := c.do(ctx, http.MethodPost, "/v1/messages", body, &s)
	s.Created = status == http.StatusAccepted
	return s, err
}

// Message returns a message's state: GET /v1/messages/{id}.
func (c *Client) Message(ctx context.Context, id string) (Message, error) {
	var m Message
	_, err := c.do(ctx, http.MethodGet, "/v1/messages/"+url.PathEscape(id), nil, &m)
	return m, err
}

// InboxMessage is an inbound message held for the node.
type InboxMessage struct {
	ID         string    `json:"id"`
	Ciphertext []byte    `json:"ciphertext"`
	Path       string    `json:"path"`
	ReceivedAt time.Time `json:"received_at"`
}

// Inbox returns the inbound messages the node has not acked, waiting up to
// wait (at most 60 s) for one to arrive when there are none: GET
// /v1/inbox?wait=.
func (c *Client) Inbox(ctx context.Context, wait time.Duration) ([]InboxMessage, error) {
	var out struct {
		Messages []InboxMessage `json:"messages"`
	}
	path := "/v1/inbox"
	if wait > 0 {
		path += "?wait=" + url.QueryEscape(wait.String())
	}
	_, err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out.Messages, err
}

// Ack tells the sidecar the node has an inbound message: POST
// /v1/inbox/{id}/ack. Acking twice is fine.
func (c *Client) Ack(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/inbox/"+url.PathEscape(id)+"/ack", nil, nil)
	return err
}

// Status returns the sidecar's status: GET /v1/status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	_, err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// Ready returns nil when the sidecar can do its job, and otherwise an
// *Error (503) whose Message says why not: GET /readyz.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/readyz", nil, nil)
	return err
}

// do makes one call; out, when not nil, receives the JSON answer.
func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("sidecar %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("sidecar %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return resp.StatusCode, &Error{Method: method, Path: path, Status: resp.StatusCode, Message: msg}
	}
	if out == nil {
		return resp.StatusCode, nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return resp.StatusCode, fmt.Errorf("sidecar %s %s: answer is not the expected JSON: %w", method, path, err)
	}
	return resp.StatusCode, nil
}
