-- Anonymous mode (relay_identity = "anonymous").
--
-- meta holds the sidecar's own durable settings, one value per key; the
-- first is the anonymous level-1 subscription's userID, generated once and
-- kept so that the relay's per-userID acks keep working across restarts.
CREATE TABLE meta (
	key   TEXT NOT NULL PRIMARY KEY,
	value TEXT NOT NULL
);

-- The inbox gets a fourth state, not_for_node: an anonymous subscription
-- receives every message stored under its subscription key, other peers'
-- too (they share the 16-bit prefix); what the node cannot open (400 or
-- 422) is expected there, and is kept apart from refused, which stays the
-- sign of a problem. SQLite cannot change a CHECK in place: the table is
-- rebuilt, keeping seq, as 0002 did.
CREATE TABLE inbox_new (
	seq             INTEGER PRIMARY KEY AUTOINCREMENT,
	id              TEXT    NOT NULL UNIQUE,
	ciphertext      BLOB    NOT NULL,
	received_at     INTEGER NOT NULL,
	state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'refused', 'not_for_node')),
	finished_at     INTEGER NOT NULL DEFAULT 0,
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_attempt_at INTEGER NOT NULL DEFAULT 0,
	last_error      TEXT    NOT NULL DEFAULT ''
);
INSERT INTO inbox_new (seq, id, ciphertext, received_at, state, finished_at, attempts, next_attempt_at, last_error)
	SELECT seq, id, ciphertext, received_at, state, finished_at, attempts, next_attempt_at, last_error FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;

CREATE INDEX inbox_pending ON inbox (seq, next_attempt_at) WHERE state = 'pending';
CREATE INDEX inbox_finished ON inbox (state, finished_at) WHERE state != 'pending';
