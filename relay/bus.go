package relay

import "context"

// Bus links the instances of one relay that share a store (PROTOCOL.md,
// "One relay, several instances"): what one instance commits reaches the
// subscribers of the others, an ack on one resolves a publish waiting on
// another, and a peer's newer connection on one replaces (4409) its older
// one on another. A store shared by instances implements it (New finds it
// with a type assertion on the Store); a store of one instance does not,
// and the server then uses none: its hub is the whole relay.
//
// Each instance's hub stays the fast path for its own connections: an
// instance hears only the other instances' events.
type Bus interface {
	// Listen delivers the other instances' events to h until ctx ends or
	// the store closes, each instance's in the order it committed them. It
	// returns once it listens: an event committed after it returned
	// reaches h.
	Listen(ctx context.Context, h BusHandler) error
	// PeerConnected records and announces a new authenticated connection
	// of peer (whose subscription key is key) and returns its generation:
	// a later connection of the peer, on any instance, has a larger one.
	PeerConnected(ctx context.Context, peer, key string) (gen int64, err error)
	// PeerDisconnected ends the presence of the peer's connection gen, if
	// no newer one has taken its place.
	PeerDisconnected(peer, key string, gen int64)
}

// BusHandler receives another instance's events. Calls come from one
// goroutine and must not block for long.
type BusHandler interface {
	// Stored: m was committed by another instance; existing is set for a
	// republish of a message its recipient has not acked.
	Stored(m Message, existing bool)
	// RecipientAcked: the recipient of message id acked it.
	RecipientAcked(id string)
	// PeerConnected: peer has a connection of generation gen elsewhere;
	// an older one here is replaced.
	PeerConnected(peer string, gen int64)
	// Resync: events may have been lost (the link to the store broke):
	// every subscriber must read the store again.
	Resync(reason string)
}
