-- 0001: messages, acks, per-key quota usage and running totals.

-- One row per stored message. seq is the message's relay.Message.Seq:
-- AUTOINCREMENT so that a seq is never handed out twice, even after Sweep
-- has deleted the newest message (a reader paging with "after" relies on it).
-- ciphertext is the last column so that reading the others never walks its
-- overflow pages.
CREATE TABLE messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    recipient       TEXT    NOT NULL,
    stored_at       INTEGER NOT NULL, -- unix nanoseconds
    size            INTEGER NOT NULL, -- length(ciphertext)
    recipient_acked INTEGER NOT NULL DEFAULT 0,
    ciphertext      BLOB    NOT NULL
);
CREATE UNIQUE INDEX messages_id ON messages (id);
-- Anonymous replay: key = ? AND seq > ? ORDER BY seq (seq is the rowid, so
-- it is the index's implicit second column).
CREATE INDEX messages_key ON messages (key);
-- Peer replay: recipient = ? AND recipient_acked = 0 AND seq > ? ORDER BY seq.
-- Partial, so acked messages cost it nothing.
CREATE INDEX messages_unacked ON messages (recipient) WHERE recipient_acked = 0;
-- Sweep: stored_at < ? ORDER BY stored_at.
CREATE INDEX messages_stored_at ON messages (stored_at);

-- Acks by subscribers other than the message's recipient peer (whose ack
-- sets messages.recipient_acked instead). peer separates the namespaces:
-- 0 = anonymous userID, 1 = authenticated peer ID.
CREATE TABLE acks (
    seq     INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    peer    INTEGER NOT NULL,
    user_id TEXT    NOT NULL,
    PRIMARY KEY (seq, peer, user_id)
) WITHOUT ROWID;

-- Per subscription key: messages (and their bytes) that the recipient peer
-- has not acked. Kept in step with messages in the same transaction, so the
-- quota check is one primary-key lookup. A key with nothing unacked has no row.
CREATE TABLE key_usage (
    key      TEXT    PRIMARY KEY,
    messages INTEGER NOT NULL,
    bytes    INTEGER NOT NULL
) WITHOUT ROWID;

-- Everything stored, for Stats without a table scan. Exactly one row.
CREATE TABLE totals (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    messages INTEGER NOT NULL,
    bytes    INTEGER NOT NULL
);
INSERT INTO totals (id, messages, bytes) VALUES (1, 0, 0);
