package devnode

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"courier/localapi/apiclient"
	"courier/wire"
)

// Node endpoints that fault injection can break.
const (
	EndpointInbound = "inbound" // POST /courier/inbound
	EndpointOffline = "offline" // POST /courier/offline
	EndpointSign    = "sign"    // POST /ob/signmessage
)

var endpoints = []string{EndpointInbound, EndpointOffline, EndpointSign}

// Final states of a message in the sidecar (PROTOCOL.md, sidecar local API).
var finalStates = []string{"delivered", "handed_off", "failed"}

// Options configure a Node. The zero value is usable: a fresh identity that
// lives as long as the process, no sidecar.
type Options struct {
	// PrivateKey is the node's identity. When nil, IdentityFile is loaded,
	// or created if it does not exist; when both are empty a fresh key is
	// generated and never saved.
	PrivateKey   ed25519.PrivateKey
	IdentityFile string
	// SidecarURL is the base URL of the sidecar's local API, such as
	// http://127.0.0.1:4100. Only Send and MessageState need it.
	SidecarURL string
	// Client talks to the sidecar. Default: a client with a 30 s timeout.
	Client *http.Client
	// Logger gets one line per request handled and message sent. Keys and
	// ciphertexts are never logged. Default: discard.
	Logger *slog.Logger
	// MaxBodyBytes bounds a request body. Default: 32 MiB.
	MaxBodyBytes int64
	// PollInterval is how often WaitState asks the sidecar. Default: 100 ms.
	PollInterval time.Duration
	// Now is the clock. Default: time.Now.
	Now func() time.Time
	// OfflineDir is the simulated OFFLINE network (see OfflineStore) this
	// node publishes into from its OFFLINE endpoint and polls for messages
	// to itself. Empty: the OFFLINE endpoint only records what it is given.
	OfflineDir string
	// OfflinePoll is how often RunOfflinePoll looks into the OFFLINE store.
	// Default: one minute, as openbazaar-go polls its push nodes.
	OfflinePoll time.Duration
}

// Received is a message that came in on the inbound endpoint and opened.
type Received struct {
	ID            string      `json:"id"`
	Sender        string      `json:"sender"`        // Qm… peer ID of the signer
	SenderPubKey  string      `json:"sender_pubkey"` // hex, marshalled
	Type          MessageType `json:"-"`
	TypeName      string      `json:"type"`
	Text          string      `json:"text"`
	Subject       string      `json:"subject,omitempty"`
	ChatMessageID string      `json:"chat_message_id,omitempty"`
	Path          string      `json:"path"`        // as the first delivery said; OFFLINE when found by a poll
	ReceivedAt    string      `json:"received_at"` // as the first delivery said
	FirstSeen     time.Time   `json:"first_seen"`
	LastSeen      time.Time   `json:"last_seen"`
	// Count is how many times this message was handed in on the inbound
	// endpoint (by a sidecar), duplicates included: "exactly once" means 1.
	Count int `json:"count"`
	// OfflineCount is how many copies of it polls found in the OFFLINE
	// store; the node keeps the first it has and drops the rest by ID.
	OfflineCount int `json:"offline_count,omitempty"`
	// PublishedAt is when the copy a poll took first was published OFFLINE
	// (zero when it never came that way): FirstSeen minus PublishedAt is
	// the OFFLINE path's delay.
	PublishedAt time.Time `json:"published_at,omitzero"`
}

// Offline is a message handed to the OFFLINE publish endpoint.
type Offline struct {
	ID         string    `json:"id"`
	Recipient  string    `json:"recipient"`
	Ciphertext []byte    `json:"ciphertext"` // base64 in JSON
	FirstSeen  time.Time `json:"first_seen"`
	LastSeen   time.Time `json:"last_seen"`
	Count      int       `json:"count"` // hand-offs of this ID, duplicates included
}

// Fault makes an endpoint fail.
type Fault struct {
	Status int `json:"status"` // answered instead of handling the request
	// Remaining is how many more requests fail; negative: until cleared.
	Remaining int `json:"remaining"`
	// RetryAfter, when positive, is sent as a Retry-After header (seconds).
	RetryAfter int `json:"retry_after,omitempty"`
}

// EndpointStats counts the requests an endpoint saw.
type EndpointStats struct {
	Calls    int `json:"calls"`    // every request, failed ones included
	Injected int `json:"injected"` // answered by fault injection
	Rejected int `json:"rejected"` // answered 4xx: malformed, or a message that would not open
	OK       int `json:"ok"`       // answered 2xx
}

// Node is a stand-in OpenBazaar node: it owns an identity, serves the node's
// side of PROTOCOL.md and records what it is handed. It is safe for
// concurrent use.
type Node struct {
	priv   ed25519.PrivateKey
	pubKey []byte // marshalled
	peerID string

	sidecar   atomic.Pointer[apiclient.Client] // settable at run time: see SetSidecarURL
	client    *http.Client
	log       *slog.Logger
	maxBody   int64
	pollEvery time.Duration
	now       func() time.Time

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change to the fields below
	received map[string]*Received
	recOrder []string
	offline  map[string]*Offline
	offOrder []string
	faults   map[string]Fault
	stats    map[string]*EndpointStats

	store       *OfflineStore // nil: no simulated OFFLINE network
	offlinePoll time.Duration
	pollMu      sync.Mutex // one poll at a time
	pollStats   OfflinePollStats
}

// New returns a Node with the identity and settings of opts.
func New(opts Options) (*Node, error) {
	n := &Node{
		client:    opts.Client,
		log:       opts.Logger,
		maxBody:   opts.MaxBodyBytes,
		pollEvery: opts.PollInterval,
		now:       opts.Now,
		changed:   make(chan struct{}),
	}
	if n.client == nil {
		n.client = &http.Client{Timeout: 30 * time.Second}
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	if n.maxBody <= 0 {
		n.maxBody = 32 << 20
	}
	if n.pollEvery <= 0 {
		n.pollEvery = 100 * time.Millisecond
	}
	if n.now == nil {
		n.now = time.Now
	}
	n.offlinePoll = opts.OfflinePoll
	if n.offlinePoll <= 0 {
		n.offlinePoll = time.Minute
	}
	if opts.OfflineDir != "" {
		st, err := OpenOfflineStore(opts.OfflineDir)
		if err != nil {
			return nil, err
		}
		n.store = st
	}
	if opts.SidecarURL != "" {
		if err := n.SetSidecarURL(opts.SidecarURL); err != nil {
			return nil, err
		}
	}
	switch {
	case opts.PrivateKey != nil:
		if len(opts.PrivateKey) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("private key is %d bytes, want %d", len(opts.PrivateKey), ed25519.PrivateKeySize)
		}
		n.priv = opts.PrivateKey
	case opts.IdentityFile != "":
		priv, created, err := LoadOrCreateIdentity(opts.IdentityFile)
		if err != nil {
			return nil, err
		}
		if created {
			n.log.Info("created identity", "file", opts.IdentityFile, "peer_id", PeerID(priv))
		}
		n.priv = priv
	default:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		n.priv = priv
	}
	n.pubKey = wire.MarshalPublicKey(n.priv.Public().(ed25519.PublicKey))
	n.peerID = wire.PeerIDFromPublicKey(n.pubKey).String()
	n.resetLocked()
	return n, nil
}

// PeerID returns the node's Qm… peer ID.
func (n *Node) PeerID() string { return n.peerID }

// PublicKey returns the node's raw Ed25519 public key.
func (n *Node) PublicKey() ed25519.PublicKey { return n.priv.Public().(ed25519.PublicKey) }

// MarshalledPublicKey returns the node's libp2p-marshalled public key.
func (n *Node) MarshalledPublicKey() []byte { return bytes.Clone(n.pubKey) }

// PubKeyHex is the hex of MarshalledPublicKey, as the sign endpoint reports it.
func (n *Node) PubKeyHex() string { return hex.EncodeToString(n.pubKey) }

// Sign signs content with the node's key, as POST /ob/signmessage does.
func (n *Node) Sign(content []byte) []byte { return ed25519.Sign(n.priv, content) }

// Seal seals a chat message from this node to recipientPub.
func (n *Node) Seal(recipientPub ed25519.PublicKey, text string) ([]byte, error) {
	return SealMessage(recipientPub, n.priv, Message{Type: TypeChat, Chat: NewChat(text, "", n.now())})
}

// Open opens a ciphertext sealed to this node.
func (n *Node) Open(ciphertext []byte) (Message, error) { return Open(ciphertext, n.priv) }

func (n *Node) resetLocked() {
	n.received = map[string]*Received{}
	n.recOrder = nil
	n.offline = map[string]*Offline{}
	n.offOrder = nil
	n.faults = map[string]Fault{}
	n.stats = map[string]*EndpointStats{}
	for _, e := range endpoints {
		n.stats[e] = &EndpointStats{}
	}
	n.pollStats = OfflinePollStats{}
}

// notifyLocked wakes everyone waiting for a change.
func (n *Node) notifyLocked() {
	close(n.changed)
	n.changed = make(chan struct{})
}

// Reset forgets everything received and handed off, clears faults and
// zeroes the stats. The identity stays.
func (n *Node) Reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.resetLocked()
	n.notifyLocked()
}

// Deliver records a message handed to the inbound endpoint: it checks that
// id is the ciphertext's message ID, opens it (unless this ID was seen
// before) and counts the delivery. It returns the record as it now stands.
func (n *Node) Deliver(id string, ciphertext []byte, path, receivedAt string) (Received, error) {
	if got := wire.MessageID(ciphertext); id != got {
		return Received{}, fmt.Errorf("id %q is not the message ID of the ciphertext (%s)", id, got)
	}
	n.mu.Lock()
	if r, ok := n.received[id]; ok {
		r.Count++
		r.LastSeen = n.now()
		out := *r
		n.notifyLocked()
		n.mu.Unlock()
		return out, nil
	}
	n.mu.Unlock()

	m, err := Open(ciphertext, n.priv)
	if err != nil {
		return Received{}, err
	}
	now := n.now()
	r := &Received{
		ID:           id,
		Sender:       m.SenderPeerID,
		SenderPubKey: hex.EncodeToString(wire.MarshalPublicKey(m.SenderPubKey)),
		Type:         m.Type,
		TypeName:     m.Type.String(),
		Text:         m.Text,
		Path:         path,
		ReceivedAt:   receivedAt,
		FirstSeen:    now,
		LastSeen:     now,
		Count:        1,
	}
	if m.Chat != nil {
		r.Subject, r.ChatMessageID = m.Chat.Subject, m.Chat.MessageID
	}

	n.mu.Lock()
	defer n.mu.Unlock()
	if prev, ok := n.received[id]; ok { // a concurrent duplicate opened it first
		prev.Count++
		prev.LastSeen = now
		r = prev
	} else {
		n.received[id] = r
		n.recOrder = append(n.recOrder, id)
	}
	n.notifyLocked()
	return *r, nil
}

// HandOff records a message handed to the OFFLINE publish endpoint.
func (n *Node) HandOff(recipient string, ciphertext []byte) Offline {
	id := wire.MessageID(ciphertext)
	now := n.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	o, ok := n.offline[id]
	if !ok {
		o = &Offline{ID: id, Recipient: recipient, Ciphertext: bytes.Clone(ciphertext), FirstSeen: now}
		n.offline[id] = o
		n.offOrder = append(n.offOrder, id)
	}
	o.Count++
	o.LastSeen = now
	n.notifyLocked()
	return *o
}

// Received returns the messages received so far, oldest first.
func (n *Node) Received() []Received {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.receivedLocked()
}

func (n *Node) receivedLocked() []Received {
	out := make([]Received, 0, len(n.recOrder))
	for _, id := range n.recOrder {
		out = append(out, *n.received[id])
	}
	return out
}

// Offline returns the messages handed to the OFFLINE endpoint, oldest first.
func (n *Node) Offline() []Offline {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.offlineLocked()
}

func (n *Node) offlineLocked() []Offline {
	out := make([]Offline, 0, len(n.offOrder))
	for _, id := range n.offOrder {
		o := *n.offline[id]
		o.Ciphertext = bytes.Clone(o.Ciphertext)
		out = append(out, o)
	}
	return out
}

// WaitReceived waits until at least min distinct messages have been received
// or ctx ends, and returns what has been received either way; the error is
// ctx's when it ended first.
func (n *Node) WaitReceived(ctx context.Context, min int) ([]Received, error) {
	var out []Received
	err := n.wait(ctx, func() bool {
		out = n.receivedLocked()
		return len(out) >= min
	})
	return out, err
}

// WaitOffline is WaitReceived for the OFFLINE endpoint.
func (n *Node) WaitOffline(ctx context.Context, min int) ([]Offline, error) {
	var out []Offline
	err := n.wait(ctx, func() bool {
		out = n.offlineLocked()
		return len(out) >= min
	})
	return out, err
}

// wait calls done under the lock until it reports true or ctx ends.
func (n *Node) wait(ctx context.Context, done func() bool) error {
	for {
		n.mu.Lock()
		ok, ch := done(), n.changed
		n.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			n.mu.Lock()
			done()
			n.mu.Unlock()
			return ctx.Err()
		}
	}
}

// ErrUnknownEndpoint is returned by SetFault for a name not in
// EndpointInbound, EndpointOffline, EndpointSign.
var ErrUnknownEndpoint = errors.New("unknown endpoint")

// SetFault makes endpoint answer f.Status (default 503) to the next
// f.Remaining requests, or to every request until cleared when f.Remaining
// is negative. A zero Remaining clears the fault: the endpoint recovers.
func (n *Node) SetFault(endpoint string, f Fault) error {
	if !slices.Contains(endpoints, endpoint) {
		return fmt.Errorf("%w %q: want one of %s", ErrUnknownEndpoint, endpoint, strings.Join(endpoints, ", "))
	}
	if f.Status == 0 {
		f.Status = http.StatusServiceUnavailable
	}
	if f.Status < 400 || f.Status > 599 {
		return fmt.Errorf("fault status %d: want a 4xx or 5xx", f.Status)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if f.Remaining == 0 {
		delete(n.faults, endpoint)
	} else {
		n.faults[endpoint] = f
	}
	n.notifyLocked()
	return nil
}

// Faults returns the faults in force, by endpoint.
func (n *Node) Faults() map[string]Fault {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]Fault, len(n.faults))
	for k, v := range n.faults {
		out[k] = v
	}
	return out
}

// Stats returns request counts by endpoint.
func (n *Node) Stats() map[string]EndpointStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]EndpointStats, len(n.stats))
	for k, v := range n.stats {
		out[k] = *v
	}
	return out
}

// takeFault counts a call to endpoint and reports the fault to answer it
// with, if one is in force (using one of its remaining failures).
func (n *Node) takeFault(endpoint string) (Fault, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stats[endpoint].Calls++
	f, ok := n.faults[endpoint]
	if !ok {
		return Fault{}, false
	}
	n.stats[endpoint].Injected++
	if f.Remaining > 0 {
		if f.Remaining--; f.Remaining == 0 {
			delete(n.faults, endpoint)
		} else {
			n.faults[endpoint] = f
		}
	}
	n.notifyLocked()
	return f, true
}

func (n *Node) countResult(endpoint string, status int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch s := n.stats[endpoint]; {
	case status < 300:
		s.OK++
	case status < 500:
		s.Rejected++
	}
	n.notifyLocked()
}

// SendRequest is a chat message to send through the sidecar.
type SendRequest struct {
	ToPeer   string `json:"to_peer"`   // Qm… (needs ToPubKey) or 12D3Koo…
	ToPubKey string `json:"to_pubkey"` // hex, raw or marshalled
	Text     string `json:"text"`
	Subject  string `json:"subject,omitempty"`
}

// MessageState is the sidecar's view of a message: POST /v1/messages answers
// ID and State, GET /v1/messages/{id} all of it.
type MessageState struct {
	ID        string `json:"id"`
	Recipient string `json:"recipient,omitempty"`
	State     string `json:"state"`
	Path      string `json:"path,omitempty"`
	Attempts  int    `json:"attempts,omitempty"`
	CreatedAt string `json:"created_at,omitempty"`
	UpdatedAt string `json:"updated_at,omitempty"`
	LastError string `json:"last_error,omitempty"`
}

// Final reports whether the state is one the sidecar will not leave.
func (s MessageState) Final() bool { return slices.Contains(finalStates, s.State) }

// SendResult is what Send did.
type SendResult struct {
	MessageState
	Recipient     string `json:"recipient"`       // peer ID the sidecar was given
	ChatMessageID string `json:"chat_message_id"` // the pb.Chat's own ID
	HTTPStatus    int    `json:"-"`               // the sidecar's answer: 202 new, 200 known
}

// SidecarError is a non-2xx answer from the sidecar: its HTTP status and
// its JSON error text.
type SidecarError = apiclient.Error

// ErrNoSidecar is returned by Send and MessageState when no sidecar URL is
// configured.
var ErrNoSidecar = errors.New("no sidecar URL configured")

// SetSidecarURL points Send and State at a sidecar's local API. A demo
// or test harness that starts the node before its sidecar sets it later.
func (n *Node) SetSidecarURL(s string) error {
	u, err := url.Parse(strings.TrimRight(s, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("sidecar URL %q: want http://host:port", s)
	}
	c, err := apiclient.New(u.String(), apiclient.Options{HTTPClient: n.client})
	if err != nil {
		return err
	}
	n.sidecar.Store(c)
	return nil
}

// Send seals a chat message to the recipient and posts it to the sidecar's
// POST /v1/messages.
func (n *Node) Send(ctx context.Context, req SendRequest) (SendResult, error) {
	sc := n.sidecar.Load()
	if sc == nil {
		return SendResult{}, ErrNoSidecar
	}
	to, err := ParseRecipient(req.ToPeer, req.ToPubKey)
	if err != nil {
		return SendResult{}, fmt.Errorf("recipient: %w", err)
	}
	chat := NewChat(req.Text, req.Subject, n.now())
	ct, err := SealMessage(to.PubKey, n.priv, Message{Type: TypeChat, Chat: chat})
	if err != nil {
		return SendResult{}, fmt.Errorf("seal: %w", err)
	}
	res := SendResult{Recipient: to.PeerID, ChatMessageID: chat.MessageID}
	sub, err := sc.Submit(ctx, to.PeerID, ct)
	var e *SidecarError
	switch {
	case errors.As(err, &e):
		res.HTTPStatus = e.Status
	case err == nil && sub.Created:
		res.HTTPStatus = http.StatusAccepted
	case err == nil:
		res.HTTPStatus = http.StatusOK
	}
	if err != nil {
		return res, err
	}
	res.ID, res.State = sub.ID, sub.State
	status := res.HTTPStatus
	if want := wire.MessageID(ct); res.ID != want {
		return res, fmt.Errorf("sidecar gave message ID %q, want %s (sha256 of the ciphertext)", res.ID, want)
	}
	n.log.Info("sent", "id", res.ID, "to", to.PeerID, "state", res.State, "status", status)
	return res, nil
}

// State asks the sidecar for a message's state: GET /v1/messages/{id}.
func (n *Node) State(ctx context.Context, id string) (MessageState, error) {
	sc := n.sidecar.Load()
	if sc == nil {
		return MessageState{}, ErrNoSidecar
	}
	if !wire.ValidMessageID(id) {
		return MessageState{}, fmt.Errorf("%q is not a message ID", id)
	}
	m, err := sc.Message(ctx, id)
	if err != nil {
		return MessageState{}, err
	}
	return MessageState{
		ID: m.ID, Recipient: m.Recipient, State: m.State, Path: m.Path, Attempts: m.Attempts,
		CreatedAt: jsonTime(m.CreatedAt), UpdatedAt: jsonTime(m.UpdatedAt), LastError: m.LastError,
	}, nil
}

// jsonTime is t as the sidecar wrote it, or "" for none.
func jsonTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339Nano)
}

// WaitState polls State every PollInterval until the message reaches a final
// state (delivered, handed_off, failed) or ctx ends; it returns the last
// state seen, with ctx's error in the latter case.
func (n *Node) WaitState(ctx context.Context, id string) (MessageState, error) {
	t := time.NewTimer(0)
	defer t.Stop()
	var last MessageState
	for {
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-t.C:
		}
		s, err := n.State(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return last, ctx.Err()
			}
			return last, err
		}
		if last = s; s.Final() {
			return s, nil
		}
		t.Reset(n.pollEvery)
	}
}
