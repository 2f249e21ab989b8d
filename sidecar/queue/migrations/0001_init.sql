-- The outbox: messages from the node on their way to a recipient.
-- Times are Unix nanoseconds; 0 means unset.
CREATE TABLE outbox (
	seq             INTEGER PRIMARY KEY AUTOINCREMENT,
	id              TEXT    NOT NULL UNIQUE,  -- wire.MessageID(ciphertext)
	recipient       TEXT    NOT NULL,
	ciphertext      BLOB    NOT NULL,
	state           TEXT    NOT NULL CHECK (state IN ('queued', 'sending', 'delivered', 'handed_off', 'failed')),
	path            TEXT    NOT NULL DEFAULT '' CHECK (path IN ('', 'INDIRECT', 'OFFLINE')),
	attempts        INTEGER NOT NULL DEFAULT 0,
	created_at      INTEGER NOT NULL,
	updated_at      INTEGER NOT NULL,
	last_error      TEXT    NOT NULL DEFAULT '',
	next_attempt_at INTEGER NOT NULL DEFAULT 0
);

-- Due: one range scan per state in seq order, path and next_attempt_at
-- checked from the index without touching the table. Counts uses it too.
CREATE INDEX outbox_due ON outbox (state, seq, path, next_attempt_at);

-- Recent: the most recently updated messages, for the status page.
CREATE INDEX outbox_updated ON outbox (updated_at);

-- The inbox: messages from the relay on their way to the node. A row stays
-- after delivery so that a redelivered ID is recognised.
CREATE TABLE inbox (
	seq             INTEGER PRIMARY KEY AUTOINCREMENT,
	id              TEXT    NOT NULL UNIQUE,
	ciphertext      BLOB    NOT NULL,
	received_at     INTEGER NOT NULL,
	delivered       INTEGER NOT NULL DEFAULT 0 CHECK (delivered IN (0, 1)),
	delivered_at    INTEGER NOT NULL DEFAULT 0,
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_attempt_at INTEGER NOT NULL DEFAULT 0,
	last_error      TEXT    NOT NULL DEFAULT ''
);

-- PendingInbound: only undelivered rows, in seq order.
CREATE INDEX inbox_pending ON inbox (seq, next_attempt_at) WHERE delivered = 0;
