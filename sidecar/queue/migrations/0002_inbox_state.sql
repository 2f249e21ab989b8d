-- The inbox gets an explicit state: pending (the node does not have the
-- message yet), delivered (the node has it: its inbound endpoint answered
-- 2xx, or it acked it after a poll), refused (its inbound endpoint answered
-- 400 or 422: it cannot use it; kept, shown, not retried). finished_at is
-- when it became delivered or refused; retention counts from it.
-- SQLite cannot change a CHECK in place: the table is rebuilt, keeping seq.
CREATE TABLE inbox_new (
	seq             INTEGER PRIMARY KEY AUTOINCREMENT,
	id              TEXT    NOT NULL UNIQUE,
	ciphertext      BLOB    NOT NULL,
	received_at     INTEGER NOT NULL,
	state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'refused')),
	finished_at     INTEGER NOT NULL DEFAULT 0,
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_attempt_at INTEGER NOT NULL DEFAULT 0,
	last_error      TEXT    NOT NULL DEFAULT ''
);
INSERT INTO inbox_new (seq, id, ciphertext, received_at, state, finished_at, attempts, next_attempt_at, last_error)
	SELECT seq, id, ciphertext, received_at,
		CASE delivered WHEN 1 THEN 'delivered' ELSE 'pending' END,
		delivered_at, attempts, next_attempt_at, last_error
	FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;

-- PendingInbound: only pending rows, in seq order.
CREATE INDEX inbox_pending ON inbox (seq, next_attempt_at) WHERE state = 'pending';

-- Refused listing and Prune: finished rows by state and age.
CREATE INDEX inbox_finished ON inbox (state, finished_at) WHERE state != 'pending';
