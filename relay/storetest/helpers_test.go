package storetest

import (
	"strings"
	"testing"

	"courier/wire"
)

func TestPeers(t *testing.T) {
	a, b := PeersSharingKey()
	if a.ID == b.ID || a.Key != b.Key {
		t.Errorf("PeersSharingKey = %+v, %+v: want two peers, one key", a, b)
	}
	for _, p := range []Peer{a, b, NewPeer(1)} {
		id, err := wire.ParsePeerID(p.ID)
		if err != nil || id.Canonical() != p.ID || id.SubscriptionKey(wire.RelayPrefixBits) != p.Key {
			t.Errorf("peer %+v is not a canonical peer ID with its key: %v", p, err)
		}
	}
	if NewPeer(1) != NewPeer(1) || NewPeer(1) == NewPeer(2) {
		t.Errorf("NewPeer is not deterministic and distinct")
	}
}

func TestNewMessageAndBody(t *testing.T) {
	p := NewPeer(1)
	m := NewMessage(p, Body("tag", 100))
	if len(m.Ciphertext) != 100 || !strings.HasPrefix(string(m.Ciphertext), "tag") ||
		m.ID != wire.MessageID(m.Ciphertext) || m.Key != p.Key || m.Recipient != p.ID {
		t.Errorf("NewMessage = %+v", m)
	}
	if got := Body("long tag", 4); got != "long" {
		t.Errorf("Body cut = %q", got)
	}
}
