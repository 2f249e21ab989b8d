package bench

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"courier/wire"
)

// node is an in-process stand-in for an OpenBazaar node: the three
// endpoints a sidecar calls. The node is not ours, so a test server is as
// real as it needs to be; it records what a benchmark checks.
type node struct {
	name   string
	priv   ed25519.PrivateKey
	pubHex string // hex of the marshalled public key
	peerID string // Qm… form
	srv    *httptest.Server

	signs   atomic.Int64
	offline atomic.Int64 // OFFLINE hand-offs: must stay 0
	unique  atomic.Int64 // distinct message IDs arrived at the inbound endpoint

	mu       sync.Mutex
	arrivals map[string]arrival
	dups     int // posts of an ID that had arrived already
	corrupt  int // posts whose ciphertext does not hash to their ID
	waiters  map[string]chan arrival
}

// arrival is when a message first reached the node's inbound endpoint, and
// when sidecar B said it had taken it from the relay (its received_at).
type arrival struct {
	at       time.Time
	received time.Time
}

// newNode starts a node with a new identity; it stops when b's cleanup runs.
func newNode(b *testing.B, name string) *node {
	b.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	marshalled := wire.MarshalPublicKey(pub)
	n := &node{
		name:     name,
		priv:     priv,
		pubHex:   hex.EncodeToString(marshalled),
		peerID:   wire.PeerIDFromPublicKey(marshalled).String(),
		arrivals: make(map[string]arrival),
		waiters:  make(map[string]chan arrival),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /ob/signmessage", n.serveSign)
	mux.HandleFunc("POST /courier/offline", n.serveOffline)
	mux.HandleFunc("POST /courier/inbound", n.serveInbound)
	n.srv = httptest.NewServer(mux)
	b.Cleanup(n.srv.Close)
	return n
}

// URL is the node's base URL, for cluster.SidecarConfig.NodeURL.
func (n *node) URL() string { return n.srv.URL }

func (n *node) serveSign(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Content string `json:"content"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":"body: `+err.Error()+`"}`, http.StatusBadRequest)
		return
	}
	n.signs.Add(1)
	writeJSON(w, map[string]string{
		"signature": hex.EncodeToString(ed25519.Sign(n.priv, []byte(req.Content))),
		"pubkey":    n.pubHex,
		"peerId":    n.peerID,
	})
}

func (n *node) serveOffline(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	n.offline.Add(1)
	writeJSON(w, map[string]string{})
}

func (n *node) serveInbound(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	var req struct {
		ID         string    `json:"id"`
		Ciphertext string    `json:"ciphertext"`
		Path       string    `json:"path"`
		ReceivedAt time.Time `json:"received_at"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":"body: `+err.Error()+`"}`, http.StatusBadRequest)
		return
	}
	ct, err := base64.StdEncoding.DecodeString(req.Ciphertext)
	n.mu.Lock()
	if err != nil || wire.MessageID(ct) != req.ID || req.Path != "INDIRECT" {
		n.corrupt++
		n.mu.Unlock()
		http.Error(w, `{"error":"ciphertext does not match its id, or path is not INDIRECT"}`, http.StatusUnprocessableEntity)
		return
	}
	if _, seen := n.arrivals[req.ID]; seen {
		n.dups++
	} else {
		a := arrival{at: at, received: req.ReceivedAt}
		n.arrivals[req.ID] = a
		n.unique.Add(1)
		if ch, ok := n.waiters[req.ID]; ok {
			ch <- a // buffered
			delete(n.waiters, req.ID)
		}
	}
	n.mu.Unlock()
	writeJSON(w, map[string]string{"id": req.ID})
}

// expect returns a channel that gets the arrival of message id. Call it
// before the message can arrive.
func (n *node) expect(id string) <-chan arrival {
	ch := make(chan arrival, 1)
	n.mu.Lock()
	if a, ok := n.arrivals[id]; ok {
		ch <- a
	} else {
		n.waiters[id] = ch
	}
	n.mu.Unlock()
	return ch
}

// counts returns the duplicates and corrupt posts seen so far.
func (n *node) counts() (dups, corrupt int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.dups, n.corrupt
}

// lookup returns the arrivals of ids; missing lists the IDs that have not
// arrived.
func (n *node) lookup(ids []string) (found []arrival, missing []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	found = make([]arrival, len(ids))
	for i, id := range ids {
		a, ok := n.arrivals[id]
		if !ok {
			missing = append(missing, id)
		}
		found[i] = a
	}
	return found, missing
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
