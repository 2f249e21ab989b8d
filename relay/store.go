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
	// Handoff is the message's state with the OFFLINE bridge after the
	// put; only HandoffStore.PutHandoff sets it.
	Handoff HandoffState
	Err     error
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

// HandoffState is where a message stands with the relay's OFFLINE bridge.
type HandoffState int

const (
	// HandoffNone: no hand-off is pending or done (none was asked for, or
	// it was dropped: the recipient acked, or the message expired).
	HandoffNone HandoffState = iota
	// HandoffPending: the message is to be handed OFFLINE, durably so.
	HandoffPending
	// HandoffDone: the operator's node took the message (2xx). It is never
	// handed off again, also not after a republish.
	HandoffDone
)

func (h HandoffState) String() string {
	switch h {
	case HandoffPending:
		return "pending"
	case HandoffDone:
		return "handed_off"
	default:
		return "none"
	}
}

// Handoff is a pending hand-off that ClaimHandoffs has claimed.
type Handoff struct {
	Message  Message // as stored, ciphertext and all
	Attempts int     // failed attempts before this claim
	// Acked is set when the recipient peer has acked the message: the
	// hand-off is to be dropped, not made.
	Acked bool
}

// HandoffStore is a Store that also keeps the OFFLINE bridge's pending
// hand-offs (PROTOCOL.md, "The relay's OFFLINE bridge"), durably and shared
// by every instance of the relay that uses the same store. A relay with
// [offline] configured needs its store to be one.
//
// A hand-off is pending from PutHandoff until FinishHandoff (handed off:
// final) or DropHandoff. Instances take turns through claims with a lease:
// ClaimHandoffs makes a hand-off not due again until the lease ends, so
// exactly one instance works on it at a time, and a hand-off whose
// instance died is claimed again once its lease has run out.
type HandoffStore interface {
	Store
	// PutHandoff is Put that also records a pending hand-off of the
	// message, due at due, durable with the put (in the same commit):
	// unless the recipient has acked the message or it has a hand-off
	// already (pending or done). PutResult.Handoff is the message's
	// hand-off state after the put.
	PutHandoff(m Message, due time.Time, early func(PutResult)) <-chan PutResult
	// NextHandoff returns when the earliest pending hand-off is due (a
	// claimed one: when its lease ends); ok is false when none is pending.
	NextHandoff(ctx context.Context) (due time.Time, ok bool, err error)
	// ClaimHandoffs claims up to limit pending hand-offs due at now or
	// before for owner, each until now+lease: no claim returns it again
	// before then. Hand-offs of messages no longer stored are removed,
	// not returned.
	ClaimHandoffs(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]Handoff, error)
	// FinishHandoff records durably that the message has been handed off,
	// whoever claimed it. Idempotent.
	FinishHandoff(ctx context.Context, messageID string) error
	// RetryHandoff records owner's failed attempt: one more attempt, due
	// again at due. A no-op when the hand-off is no longer pending or
	// another owner has claimed it since.
	RetryHandoff(ctx context.Context, messageID, owner string, due time.Time) error
	// DropHandoff removes a pending hand-off (its recipient acked, or the
	// message expired). A finished hand-off stays finished.
	DropHandoff(ctx context.Context, messageID string) error
	// HandoffStatus returns the message's hand-off state.
	HandoffStatus(ctx context.Context, messageID string) (HandoffState, error)
}
