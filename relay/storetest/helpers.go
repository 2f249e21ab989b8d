package storetest

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"courier/relay"
	"courier/wire"
)

// Timeout bounds every wait of the suite for a write's result: a store that
// never answers fails the test instead of hanging it.
const Timeout = 30 * time.Second

// Peer is a test peer: a real Ed25519 identity's canonical (Qm…) peer ID
// and its relay subscription key.
type Peer struct {
	ID  string
	Key string
}

// Sub is the peer as an authenticated (level-2) subscriber.
func (p Peer) Sub() relay.Subscriber { return relay.Subscriber{Peer: true, ID: p.ID} }

// NewPeer returns the n-th deterministic test peer.
func NewPeer(n int) Peer {
	seed := sha256.Sum256([]byte(fmt.Sprintf("courier storetest peer %d", n)))
	pub := ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
	id := wire.PeerIDFromPublicKey(wire.MarshalPublicKey(pub))
	return Peer{ID: id.Canonical(), Key: id.SubscriptionKey(wire.RelayPrefixBits)}
}

var sharing struct {
	once sync.Once
	a, b Peer
}

// PeersSharingKey returns two different peers whose subscription keys are
// equal (their peer IDs share the first 16 bits of their digests), as
// happens by design on a real relay.
func PeersSharingKey() (Peer, Peer) {
	sharing.once.Do(func() {
		seen := make(map[string]Peer)
		for n := 1000; ; n++ { // away from the small numbers tests use
			p := NewPeer(n)
			if q, ok := seen[p.Key]; ok {
				sharing.a, sharing.b = q, p
				return
			}
			seen[p.Key] = p
		}
	})
	return sharing.a, sharing.b
}

// Anonymous is a level-1 subscriber with the given userID.
func Anonymous(userID string) relay.Subscriber { return relay.Subscriber{ID: userID} }

// NewMessage returns a message to peer to whose ciphertext is exactly body,
// with its real message ID.
func NewMessage(to Peer, body string) relay.Message {
	ct := []byte(body)
	return relay.Message{ID: wire.MessageID(ct), Key: to.Key, Recipient: to.ID, Ciphertext: ct}
}

// Body returns a body of exactly size bytes that starts with tag (cut if
// longer), so that messages of the same size still differ.
func Body(tag string, size int) string {
	if len(tag) >= size {
		return tag[:size]
	}
	return tag + strings.Repeat(".", size-len(tag))
}

// Wait returns the one value a write's channel yields, failing t if none
// comes within Timeout.
func Wait[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("no result after %v", Timeout)
		panic("unreachable")
	}
}

// MustPut puts m, waits for the result and fails t on an error.
func MustPut(t testing.TB, s relay.Store, m relay.Message) relay.PutResult {
	t.Helper()
	r := Wait(t, s.Put(m, nil))
	if r.Err != nil {
		t.Fatalf("Put(%s): %v", short(m.ID), r.Err)
	}
	return r
}

// MustAck acks id for sub, waits for the result and fails t on an error.
func MustAck(t testing.TB, s relay.Store, sub relay.Subscriber, id string) relay.AckResult {
	t.Helper()
	r := Wait(t, s.Ack(sub, id))
	if r.Err != nil {
		t.Fatalf("Ack(%+v, %s): %v", sub, short(id), r.Err)
	}
	return r
}

// MustPending is Pending that fails t on an error or when more than limit
// messages come back.
func MustPending(t testing.TB, s relay.Store, sub relay.Subscriber, key string, after int64, limit int) []relay.Message {
	t.Helper()
	ms, err := s.Pending(context.Background(), sub, key, after, limit)
	if err != nil {
		t.Fatalf("Pending(%+v, after %d, limit %d): %v", sub, after, limit, err)
	}
	if len(ms) > limit {
		t.Fatalf("Pending(%+v, after %d, limit %d) returned %d messages", sub, after, limit, len(ms))
	}
	return ms
}

// AllPending pages through everything pending for sub, as replay does,
// checking that each page is in increasing Seq order after the previous.
func AllPending(t testing.TB, s relay.Store, sub relay.Subscriber, key string) []relay.Message {
	t.Helper()
	const page = 100
	var all []relay.Message
	var after int64
	for {
		ms := MustPending(t, s, sub, key, after, page)
		for _, m := range ms {
			if m.Seq <= after {
				t.Fatalf("Pending(after %d) returned Seq %d: not oldest first", after, m.Seq)
			}
			after = m.Seq
		}
		all = append(all, ms...)
		if len(ms) < page {
			return all
		}
	}
}

// IDs returns the message IDs of ms, in order.
func IDs(ms []relay.Message) []string {
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	return ids
}

// MustStats is Stats that fails t on an error.
func MustStats(t testing.TB, s relay.Store) relay.Stats {
	t.Helper()
	st, err := s.Stats(context.Background())
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return st
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
