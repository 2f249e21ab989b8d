package devnode

import (
	"context"
	"encoding/hex"
	"errors"
	"time"

	"courier/wire"
)

// ErrNoOfflineStore is returned by PollOffline for a node started without
// an OFFLINE store (Options.OfflineDir).
var ErrNoOfflineStore = errors.New("no OFFLINE store configured")

// OfflinePollStats counts what the node's polls of the OFFLINE store did.
type OfflinePollStats struct {
	Polls      int       `json:"polls"`
	Taken      int       `json:"taken"`      // new messages opened and recorded
	Duplicates int       `json:"duplicates"` // copies of a message the node had: dropped by ID
	Unreadable int       `json:"unreadable"` // would not open (not for this key, bad signature): dropped
	LastPoll   time.Time `json:"last_poll,omitzero"`
	LastError  string    `json:"last_error,omitempty"`
	Interval   string    `json:"interval"`
	Dir        string    `json:"dir,omitempty"`
}

// OfflineStore is the node's simulated OFFLINE network, or nil.
func (n *Node) OfflineStore() *OfflineStore { return n.store }

// OfflinePollInterval is the interval RunOfflinePoll polls at.
func (n *Node) OfflinePollInterval() time.Duration { return n.offlinePoll }

// PollStats returns what the node's OFFLINE polls did so far.
func (n *Node) PollStats() OfflinePollStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.pollStats
	s.Interval = n.offlinePoll.String()
	if n.store != nil {
		s.Dir = n.store.Dir()
	}
	return s
}

// PollOffline looks once into the OFFLINE store for messages to this node,
// as openbazaar-go does at each of its polls: each one is opened (the
// Envelope's signature checked) and recorded with path OFFLINE, a copy of
// a message the node already has (by any path) is dropped by its ID, and
// what was looked at is removed from the store. It returns how many new
// messages it took.
func (n *Node) PollOffline() (int, error) {
	if n.store == nil {
		return 0, ErrNoOfflineStore
	}
	n.pollMu.Lock()
	defer n.pollMu.Unlock()
	msgs, err := n.store.Fetch(n.peerID, n.maxBody)
	n.mu.Lock()
	n.pollStats.Polls++
	n.pollStats.LastPoll = n.now()
	n.pollStats.LastError = ""
	if err != nil {
		n.pollStats.LastError = err.Error()
	}
	n.notifyLocked()
	n.mu.Unlock()
	if err != nil {
		return 0, err
	}
	taken := 0
	for _, m := range msgs {
		if n.takeOffline(m) {
			taken++
		}
		if err := n.store.Remove(n.peerID, m.ID); err != nil {
			n.log.Warn("offline poll: cannot remove a message taken", "id", m.ID, "err", err)
		}
	}
	return taken, nil
}

// takeOffline records one message found in the OFFLINE store and reports
// whether it was new.
func (n *Node) takeOffline(m StoredOffline) bool {
	n.mu.Lock()
	if r, ok := n.received[m.ID]; ok {
		r.OfflineCount++
		r.LastSeen = n.now()
		n.pollStats.Duplicates++
		n.notifyLocked()
		n.mu.Unlock()
		n.log.Info("offline poll: duplicate dropped", "id", m.ID)
		return false
	}
	n.mu.Unlock()

	msg, err := Open(m.Ciphertext, n.priv)
	if err != nil {
		n.mu.Lock()
		n.pollStats.Unreadable++
		n.notifyLocked()
		n.mu.Unlock()
		n.log.Warn("offline poll: message dropped", "id", m.ID, "err", err)
		return false
	}
	now := n.now()
	r := &Received{
		ID:           m.ID,
		Sender:       msg.SenderPeerID,
		SenderPubKey: hex.EncodeToString(wire.MarshalPublicKey(msg.SenderPubKey)),
		Type:         msg.Type,
		TypeName:     msg.Type.String(),
		Text:         msg.Text,
		Path:         "OFFLINE",
		ReceivedAt:   now.UTC().Format(time.RFC3339Nano),
		FirstSeen:    now,
		LastSeen:     now,
		OfflineCount: 1,
		PublishedAt:  m.PublishedAt,
	}
	if msg.Chat != nil {
		r.Subject, r.ChatMessageID = msg.Chat.Subject, msg.Chat.MessageID
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if prev, ok := n.received[m.ID]; ok { // the sidecar handed it in meanwhile
		prev.OfflineCount++
		prev.LastSeen = now
		n.pollStats.Duplicates++
		n.notifyLocked()
		return false
	}
	n.received[m.ID] = r
	n.recOrder = append(n.recOrder, m.ID)
	n.pollStats.Taken++
	n.notifyLocked()
	n.log.Info("received", "path", "OFFLINE", "id", m.ID, "sender", r.Sender, "type", r.TypeName,
		"delay", now.Sub(m.PublishedAt).Round(time.Millisecond))
	return true
}

// RunOfflinePoll polls the OFFLINE store every OfflinePoll until ctx ends.
// It returns at once for a node without a store.
func (n *Node) RunOfflinePoll(ctx context.Context) {
	if n.store == nil {
		return
	}
	t := time.NewTicker(n.offlinePoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := n.PollOffline(); err != nil {
			n.log.Warn("offline poll failed", "err", err)
		}
	}
}
