-- 0002: the OFFLINE bridge's hand-offs (relay.HandoffStore).

-- One row per message that is to be, or has been, handed OFFLINE. Deleted
-- with its message (sweep). state 0: pending, due at due (unix
-- nanoseconds); a claimed one has owner set and due at the end of its
-- lease. state 1: handed off, final: a republish never adds another.
CREATE TABLE handoffs (
    seq      INTEGER PRIMARY KEY REFERENCES messages (seq) ON DELETE CASCADE,
    state    INTEGER NOT NULL DEFAULT 0,
    due      INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner    TEXT    NOT NULL DEFAULT ''
);
-- Claims and NextHandoff: the pending ones by due.
CREATE INDEX handoffs_due ON handoffs (due) WHERE state = 0;
