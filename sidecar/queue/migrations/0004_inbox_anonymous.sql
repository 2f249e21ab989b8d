-- Which subscription an inbound message came by: 1 for an anonymous
-- (level-1) one, which gets other peers' messages under the same key too.
-- The node's 400/422 for such a message makes it not_for_node, for any
-- other refused, whatever relay_identity is in force when the node
-- answers (a switch may come between receipt and answer).
ALTER TABLE inbox ADD COLUMN anonymous INTEGER NOT NULL DEFAULT 0 CHECK (anonymous IN (0, 1));
