package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"courier/upstream"
)

// nodeClient calls the node's endpoints: OFFLINE publish, inbound and sign.
// Each call retries a few times within itself (go-retryablehttp: connection
// errors, 429 and 5xx, honouring Retry-After); the engine keeps a durable
// retry schedule on top, across calls and restarts.
type nodeClient struct {
	http *retryablehttp.Client
}

func newNodeClient(logger *slog.Logger, timeout time.Duration) *nodeClient {
	c := retryablehttp.NewClient()
	c.RetryMax = 2
	c.RetryWaitMin = 100 * time.Millisecond
	c.RetryWaitMax = time.Second
	c.HTTPClient.Timeout = timeout
	c.Logger = nil // errors are logged once, by the engine, with context
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	return &nodeClient{http: c}
}

// nodeError is an answer from the node that was not 2xx.
type nodeError struct {
	Status int
	Body   string
}

// refused reports whether err is the node's final no to a request: a 4xx
// answer other than 408 (timeout) and 429 (slow down), which are worth
// retrying. Retrying a refusal would only hold up what comes after it.
func refused(err error) bool {
	var ne *nodeError
	return errors.As(err, &ne) && ne.Status >= 400 && ne.Status < 500 &&
		ne.Status != http.StatusRequestTimeout && ne.Status != http.StatusTooManyRequests
}

func (e *nodeError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("node answered %d", e.Status)
	}
	return fmt.Sprintf("node answered %d: %s", e.Status, e.Body)
}

// post sends body as JSON and decodes a 2xx answer into out, if out is set.
func (n *nodeClient) post(ctx context.Context, url string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodPost, url, b)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
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
func (n *nodeClient) sign(ctx context.Context, url, content string) (upstream.Signature, error) {
	var out struct {
		Signature string `json:"signature"`
		PubKey    string `json:"pubkey"`
		PeerID    string `json:"peerId"`
	}
	if err := n.post(ctx, url, map[string]string{"content": content}, &out); err != nil {
		return upstream.Signature{}, err
	}
	if out.Signature == "" || out.PubKey == "" || out.PeerID == "" {
		return upstream.Signature{}, errors.New("sign endpoint answer lacks signature, pubkey or peerId")
	}
	return upstream.Signature{Signature: out.Signature, PubKey: out.PubKey, PeerID: out.PeerID}, nil
}
