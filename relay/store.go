package relay

import (
	"context"
	"errors"
	"time"
)

// Message is one stored message.
type Message struct {
	// Seq is the message's position in the store. It increases in commit
	// order, and commits are serial: a reader that sees Seq n sees every
	// message with a smaller Seq too. Replay and live push rely on this to
	// send each message once. A store may number each subscription key on
	// its own (the Redis store does: one INCR per key inside the put's
	// script), so the relay compares Seqs only within one key.
	Seq        int64
	ID         string // wire.MessageID of Ciphertext
	Key        string // subscription key of Recipient
	Recipient  string // canonical (Qm…) peer ID
	Ciphertext []byte
	StoredAt   time.Time
}

// Subscriber names who acks. Anonymous userIDs and authenticated peers are
// separate namespaces: Subscriber{ID: "Qm…"} and Subscriber{Peer: true,
// ID: "Qm…"} are different subscribers.
type Subscriber struct {
	Peer bool   // an authenticated (level-2) peer; ID is its canonical peer ID
	ID   string // the anonymous userID, or the canonical peer ID
}

// PutResult is the outcome of a Put, known once it has committed.
type PutResult struct {
	Message Message // as stored; for an existing ID the original, with its original Seq
	// Existing is set when the ID was stored already (an idempotent republish).
	Existing bool
	// RecipientAcked is set when the recipient peer has acked the message.
	RecipientAcked bool
	// RecipientOnline is set by a store shared by several relay instances
	// when the recipient peer is connected to one of them (maybe another
	// instance than this one), so a level-2 publish waits for its ack.
	RecipientOnline bool
	Err             error
}

// AckResult is the outcome of an Ack, known once it has committed.
type AckResult struct {
	Found bool // the message is stored
	// ByRecipient is set when the subscriber is the authenticated recipient
	// peer of the message: the ack that makes a publish "delivered".
	ByRecipient bool
	Recipient   string // the message's recipient, when Found
	Err         error
}

// Store errors.
var (
	// ErrOverQuota: the key already holds its limit of messages the
	// recipient has not acked (count or bytes). Nothing was stored.
	ErrOverQuota = errors.New("over quota")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("store closed")
	// ErrRecipientMismatch: a message with the ID is stored already, for
	// another recipient. The same ciphertext is the same message, with one
	// recipient; nothing was stored and nothing changed.
	ErrRecipientMismatch = errors.New("message ID stored for another recipient")
)

// Store holds messages durably. Writes (Put, Ack) return at once with a
// channel that yields exactly one result after the write has committed;
// writes commit in the order they were called, many per transaction (group
// commit). Implementations are safe for concurrent use.
type Store interface {
	// Put stores m (Seq and StoredAt are assigned by the store) unless a
	// message with the same ID is stored already, in which case the existing
	// one is returned with Existing set, or ErrRecipientMismatch if it is
	// stored for another recipient. ErrOverQuota when the key is full.
	//
	// early, if not nil, is called with the outcome (Err nil, Seq
	// assigned) once the store has decided it and before it is durable,
	// so that the message can be passed on while the commit runs; never
	// for an outcome that is an error. Calls come from one goroutine of
	// the store, in Put order (so in Seq order for new messages), each
	// before its Put's result is sent; the result may still carry an Err
	// if the commit then fails. early must return quickly and must not
	// wait for a write of the store.
	Put(m Message, early func(PutResult)) <-chan PutResult
	// Ack records durably that sub has the message. Acking an unknown ID is
	// not an error (Found is false); acking twice is a no-op.
	Ack(sub Subscriber, messageID string) <-chan AckResult
	// Pending returns up to limit messages with Seq > after that sub has not
	// acked, oldest first: for an anonymous subscriber every message stored
	// under key, for a peer only those addressed to it (key is then the
	// peer's own key). Replay pages through it; it never loads a backlog.
	Pending(ctx context.Context, sub Subscriber, key string, after int64, limit int) ([]Message, error)
	// Sweep deletes messages stored before cutoff and returns how many.
	Sweep(ctx context.Context, cutoff time.Time) (int, error)
	// Stats counts what is stored.
	Stats(ctx context.Context) (Stats, error)
	// Close commits what is queued, then closes. It is idempotent.
	Close() error
}

// Readier is implemented by a store that can tell whether it is usable
// now (its server answers): /readyz reports it.
type Readier interface {
	Ready(ctx context.Context) error
}

// Stats is a snapshot of a store's contents.
type Stats struct {
	Messages int64
	Bytes    int64
}

// Quota bounds what one subscription key may hold of messages its
// recipients have not acked yet. Zero means unlimited.
type Quota struct {
	MaxMessages int64
	MaxBytes    int64
}
