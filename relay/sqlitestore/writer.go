package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"courier/relay"
)

// write is one queued write. apply runs it inside the batch's transaction
// and keeps its result; deliver sends that result, or err instead, once the
// transaction's fate is known. apply returns an error only when a statement
// failed; an outcome such as ErrOverQuota is part of the result.
type write interface {
	apply(t *wtx) error
	deliver(err error)
	kind() string
	size() int // bytes it writes, roughly; for the batch byte cap
}

// wtx is what a write sees of its batch's transaction.
type wtx struct {
	ctx   context.Context
	tx    *sql.Tx
	s     *Store
	now   int64 // stored_at of messages put in this batch, unix nanoseconds
	quota relay.Quota
	// stmts are the store's prepared statements bound to tx, made on
	// first use.
	stmts [numStmts]*sql.Stmt
	// usage holds the keys whose unacked usage this transaction changed,
	// with their new values; the rest are in Store.usage. Written to
	// key_usage once per key at the end of the transaction, and into
	// Store.usage once it has committed.
	usage map[string]usage
	// totals is the batch's change to the totals row, written once at the
	// end of the transaction.
	totals usage
	// stored are the messages this transaction put, for Store.recent once
	// it has committed.
	stored []relay.Message
}

// usage counts messages (and their ciphertext bytes).
type usage struct{ n, b int64 }

// The writer's statements, prepared once on its connection.
const (
	stmtInsert = iota
	stmtLookup
	stmtAckRecipient
	stmtAckMark
	stmtAckRecent
	stmtAckLookup
	stmtAckInsert
	stmtUsageSet
	stmtUsageDelete
	stmtTotals
	numStmts
)

var stmtSQL = [numStmts]string{
	stmtInsert: `INSERT INTO messages (id, key, recipient, stored_at, size, ciphertext) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO NOTHING`,
	stmtLookup: `SELECT seq, key, recipient, stored_at, recipient_acked, ciphertext FROM messages WHERE id = ?`,
	// The recipient's first ack of a message: found, then marked. (One
	// UPDATE … RETURNING costs twice as much with go-sqlite3.)
	stmtAckRecipient: `SELECT seq, key, size FROM messages WHERE id = ? AND recipient = ? AND recipient_acked = 0`,
	stmtAckMark:      `UPDATE messages SET recipient_acked = 1 WHERE seq = ?`,
	// The same, for a message in Store.recent: the row is checked to be it.
	stmtAckRecent:   `UPDATE messages SET recipient_acked = 1 WHERE seq = ? AND id = ? AND recipient = ? AND recipient_acked = 0`,
	stmtAckLookup:   `SELECT seq, recipient FROM messages WHERE id = ?`,
	stmtAckInsert:   `INSERT INTO acks (seq, peer, user_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
	stmtUsageSet:    `INSERT INTO key_usage (key, messages, bytes) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET messages = excluded.messages, bytes = excluded.bytes`,
	stmtUsageDelete: `DELETE FROM key_usage WHERE key = ?`,
	stmtTotals:      `UPDATE totals SET messages = messages + ?, bytes = bytes + ? WHERE id = 1`,
}

// stmt returns prepared statement i bound to the transaction.
func (t *wtx) stmt(i int) *sql.Stmt {
	if t.stmts[i] == nil {
		t.stmts[i] = t.tx.StmtContext(t.ctx, t.s.stmts[i])
	}
	return t.stmts[i]
}

// usageOf returns key's unacked usage as this transaction sees it.
func (t *wtx) usageOf(key string) usage {
	if u, ok := t.usage[key]; ok {
		return u
	}
	return t.s.usage[key]
}

// addUsage adds to key's unacked usage.
func (t *wtx) addUsage(key string, n, b int64) {
	u := t.usageOf(key)
	if t.usage == nil {
		t.usage = make(map[string]usage)
	}
	t.usage[key] = usage{u.n + n, u.b + b}
}

// writeUsage writes the keys this transaction changed to key_usage, which
// holds only keys with something unacked.
func (t *wtx) writeUsage() error {
	for key, u := range t.usage {
		var err error
		if u.n <= 0 {
			_, err = t.stmt(stmtUsageDelete).ExecContext(t.ctx, key)
		} else {
			_, err = t.stmt(stmtUsageSet).ExecContext(t.ctx, key, u.n, u.b)
		}
		if err != nil {
			return fmt.Errorf("update quota usage: %w", err)
		}
	}
	return nil
}

// enqueue adds w to the writer's queue, unless the store is closed.
func (s *Store) enqueue(w write) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.queue = append(s.queue, w)
	s.cond.Signal()
	return true
}

// run is the writer goroutine: it owns s.w. It takes everything queued as
// one batch, up to MaxBatch writes and batchBytes of ciphertext (but at
// least one write), and after Close drains the queue, then exits.
func (s *Store) run() {
	defer close(s.done)
	defer close(s.announcements)
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.closed {
			s.cond.Wait()
		}
		if len(s.queue) == 0 {
			s.mu.Unlock()
			return
		}
		n, size := 0, 0
		for n < len(s.queue) && n < s.opts.MaxBatch {
			if n > 0 && size+s.queue[n].size() > s.batchBytes {
				break
			}
			size += s.queue[n].size()
			n++
		}
		batch := s.queue[:n:n]
		if n == len(s.queue) {
			s.queue = nil
		} else {
			s.queue = slices.Clone(s.queue[n:])
		}
		s.mu.Unlock()
		s.commit(batch)
	}
}

// commit runs batch in one transaction and then delivers every result.
//
// If a statement of one write fails, the transaction is rolled back, that
// write alone gets its error, and the others run again, in the same order,
// in a fresh transaction: a poisoned write does not take its neighbours
// down, and nothing of it is applied. If beginning or committing fails,
// every write still in the batch gets that error and none of them is
// applied.
func (s *Store) commit(batch []write) {
	for len(batch) > 0 {
		start := time.Now()
		bad, err := s.runTx(batch)
		switch {
		case err == nil:
			if s.opts.OnCommit != nil {
				s.opts.OnCommit(len(batch), time.Since(start))
			}
			for _, w := range batch {
				w.deliver(nil)
			}
			return
		case bad < 0:
			s.log.Error("sqlitestore: batch failed, nothing of it applied", "writes", len(batch), "err", err)
			for _, w := range batch {
				w.deliver(err)
			}
			return
		default:
			s.log.Warn("sqlitestore: write failed, retrying the rest of its batch without it",
				"write", batch[bad].kind(), "writes", len(batch), "err", err)
			batch[bad].deliver(err)
			batch = slices.Delete(slices.Clone(batch), bad, bad+1)
		}
	}
}

// runTx applies batch in one transaction and commits it. On failure it
// returns the index of the write whose statement failed, or -1 when the
// transaction itself (begin, commit) failed.
func (s *Store) runTx(batch []write) (bad int, err error) {
	ctx := context.Background() // a batch is never abandoned half-way
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return -1, fmt.Errorf("sqlitestore: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	// stored_at never goes back, even when the clock does.
	s.lastNow = max(s.lastNow, time.Now().UnixNano())
	t := &wtx{ctx: ctx, tx: tx, s: s, now: s.lastNow, quota: s.opts.Quota}
	for i, w := range batch {
		if err := w.apply(t); err != nil {
			return i, fmt.Errorf("sqlitestore: %w", err)
		}
	}
	if err := t.writeUsage(); err != nil {
		return -1, fmt.Errorf("sqlitestore: %w", err)
	}
	if t.totals.n != 0 || t.totals.b != 0 {
		if _, err := t.stmt(stmtTotals).ExecContext(ctx, t.totals.n, t.totals.b); err != nil {
			return -1, fmt.Errorf("sqlitestore: update totals: %w", err)
		}
	}
	err = tx.Commit()
	if s.unmarked {
		// Every early outcome is out before any result (see Put),
		// including those of an earlier attempt at this batch.
		done := make(chan struct{})
		s.announcements <- announcement{done: done}
		<-done
		s.unmarked = false
	}
	if err != nil {
		return -1, fmt.Errorf("sqlitestore: commit: %w", err)
	}
	for key, u := range t.usage {
		if u.n <= 0 {
			delete(s.usage, key)
		} else {
			s.usage[key] = u
		}
	}
	for _, m := range t.stored {
		s.recent.add(m)
	}
	return -1, nil
}

// recentPuts remembers where the last recentPutsMax messages put are, so
// that the recipient's ack, which usually follows soon, needs no lookup
// (see ackWrite.apply). A hint only: the ack's UPDATE checks the row it
// names, and a stale entry (swept) just falls back to the lookup.
// Writer-owned; entries are added once their transaction has committed.
type recentPuts struct {
	byID map[string]recentPut
	ring []string // ids in put order; ring[next] is the oldest once full
	next int
}

type recentPut struct {
	seq  int64
	key  string
	size int64
}

const recentPutsMax = 8192

func (r *recentPuts) add(m relay.Message) {
	if r.byID == nil {
		r.byID = make(map[string]recentPut, recentPutsMax)
	}
	if len(r.ring) < recentPutsMax {
		r.ring = append(r.ring, m.ID)
	} else {
		delete(r.byID, r.ring[r.next])
		r.ring[r.next] = m.ID
		r.next = (r.next + 1) % recentPutsMax
	}
	r.byID[m.ID] = recentPut{seq: m.Seq, key: m.Key, size: int64(len(m.Ciphertext))}
}

// announcement is one put's outcome for the announcer (a copy: a batch
// that runs again rewrites the put's own), or (early nil) a marker that it
// closes done at.
type announcement struct {
	early func(relay.PutResult)
	res   relay.PutResult
	done  chan struct{}
}

// announceLoop calls the early callbacks of Put in Put order, while the
// writer applies and commits. It ends once the writer has exited (it
// closes announcements).
func (s *Store) announceLoop() {
	defer close(s.announcerDone)
	for a := range s.announcements {
		if a.early != nil {
			a.early(a.res)
		} else {
			close(a.done)
		}
	}
}

// Put queues m and returns at once; the result comes once it has
// committed. The store assigns Seq and StoredAt. The store keeps
// m.Ciphertext until then: do not modify it before the result arrives.
// early, if not nil, hears a successful outcome while its transaction
// commits, from the store's announcer goroutine (see relay.Store).
func (s *Store) Put(m relay.Message, early func(relay.PutResult)) <-chan relay.PutResult {
	ch := make(chan relay.PutResult, 1)
	switch {
	case m.ID == "" || m.Key == "" || m.Recipient == "":
		ch <- relay.PutResult{Err: errors.New("sqlitestore: put: the message needs an ID, a Key and a Recipient")}
		return ch
	case m.Ciphertext == nil:
		m.Ciphertext = []byte{} // nil would bind as NULL
	}
	if !s.enqueue(&putWrite{m: m, ch: ch, early: early}) {
		ch <- relay.PutResult{Err: fmt.Errorf("sqlitestore: put %s: %w", m.ID, relay.ErrClosed)}
	}
	return ch
}

// Ack queues the ack and returns at once; the result comes once it has
// committed.
func (s *Store) Ack(sub relay.Subscriber, messageID string) <-chan relay.AckResult {
	ch := make(chan relay.AckResult, 1)
	if !s.enqueue(&ackWrite{sub: sub, id: messageID, ch: ch}) {
		ch <- relay.AckResult{Err: fmt.Errorf("sqlitestore: ack %s: %w", messageID, relay.ErrClosed)}
	}
	return ch
}

// Sweep deletes the messages stored before cutoff, with their acks, in
// steps of a few hundred messages, each a write of its own through the
// writer, so puts and acks interleave with a big expiry. If ctx ends
// between steps Sweep returns what it has deleted so far and ctx's error
// (a step already queued still runs).
func (s *Store) Sweep(ctx context.Context, cutoff time.Time) (int, error) {
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		w := &sweepWrite{cutoff: cutoff.UnixNano(), limit: s.sweepChunk, ch: make(chan sweepResult, 1)}
		if !s.enqueue(w) {
			return total, fmt.Errorf("sqlitestore: sweep: %w", relay.ErrClosed)
		}
		select {
		case r := <-w.ch:
			if r.err != nil {
				return total, r.err
			}
			total += r.n
			if r.n < s.sweepChunk {
				if total > 0 {
					s.log.Info("sqlitestore: swept expired messages", "messages", total, "cutoff", cutoff)
				}
				return total, nil
			}
		case <-ctx.Done():
			return total, ctx.Err()
		}
	}
}

type putWrite struct {
	m         relay.Message
	ch        chan relay.PutResult
	early     func(relay.PutResult)
	handoff   bool  // PutHandoff: record a pending hand-off too
	due       int64 // when it is due, unix nanoseconds
	announced bool  // early has the outcome (writer-owned)
	res       relay.PutResult
}

func (p *putWrite) kind() string { return "put" }
func (p *putWrite) size() int    { return len(p.m.Ciphertext) }

func (p *putWrite) deliver(err error) {
	if err != nil {
		p.ch <- relay.PutResult{Err: err}
		return
	}
	p.ch <- p.res
}

func (p *putWrite) apply(t *wtx) error {
	if err := p.applyPut(t); err != nil || !p.handoff || p.res.Err != nil {
		return err
	}
	return p.applyHandoff(t)
}

func (p *putWrite) applyPut(t *wtx) error {
	m := p.m
	p.res = relay.PutResult{}
	size := int64(len(m.Ciphertext))
	if q := t.quota; q.MaxMessages > 0 || q.MaxBytes > 0 {
		u := t.usageOf(m.Key)
		n, b := u.n, u.b
		if (q.MaxMessages > 0 && n+1 > q.MaxMessages) || (q.MaxBytes > 0 && b+size > q.MaxBytes) {
			// A full key still answers a republish of what it holds.
			found, err := p.existing(t)
			if err != nil || found {
				p.announce(t)
				return err
			}
			p.res.Err = fmt.Errorf("sqlitestore: put %s: key %s holds %d unacked messages of %d bytes; %d more bytes exceed its quota (%s): %w",
				m.ID, m.Key, n, b, size, quotaString(q), relay.ErrOverQuota)
			return nil
		}
	}

	res, err := t.stmt(stmtInsert).ExecContext(t.ctx, m.ID, m.Key, m.Recipient, t.now, size, m.Ciphertext)
	if err != nil {
		return fmt.Errorf("put %s: insert: %w", m.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("put %s: insert: %w", m.ID, err)
	} else if n == 0 {
		// An ID stored already is the same message: answer with the original.
		if found, err := p.existing(t); err != nil || found {
			p.announce(t)
			return err
		}
		return fmt.Errorf("put %s: insert conflicted, yet the ID is not stored", m.ID)
	}
	if m.Seq, err = res.LastInsertId(); err != nil {
		return fmt.Errorf("put %s: seq: %w", m.ID, err)
	}
	t.addUsage(m.Key, 1, size)
	t.totals.n++
	t.totals.b += size
	m.StoredAt = time.Unix(0, t.now)
	p.res.Message = m
	t.stored = append(t.stored, m)
	p.announce(t)
	return nil
}

// announce hands p's outcome to the announcer at once, if p has an early
// callback and the outcome is not an error: the message can be passed on
// while the rest of the batch is applied and committed. When a later
// write of the batch fails and the batch runs again without it (commit),
// p is applied again, to the same outcome (same order, same starting
// point), and not announced twice.
func (p *putWrite) announce(t *wtx) {
	if p.early == nil || p.res.Err != nil || p.announced {
		return
	}
	p.announced = true
	t.s.unmarked = true
	t.s.announcements <- announcement{early: p.early, res: p.res}
}

// existing sets the result to the stored message with p's ID, if any.
func (p *putWrite) existing(t *wtx) (bool, error) {
	var (
		old      relay.Message
		storedAt int64
		acked    bool
	)
	err := t.stmt(stmtLookup).QueryRowContext(t.ctx, p.m.ID).
		Scan(&old.Seq, &old.Key, &old.Recipient, &storedAt, &acked, &old.Ciphertext)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("put %s: look up: %w", p.m.ID, err)
	}
	if old.Recipient != p.m.Recipient {
		p.res = relay.PutResult{Err: fmt.Errorf("sqlitestore: put %s: stored for %s, not %s: %w",
			p.m.ID, old.Recipient, p.m.Recipient, relay.ErrRecipientMismatch)}
		return true, nil
	}
	old.ID, old.StoredAt = p.m.ID, time.Unix(0, storedAt)
	p.res = relay.PutResult{Message: old, Existing: true, RecipientAcked: acked}
	return true, nil
}

func quotaString(q relay.Quota) string {
	var parts []string
	if q.MaxMessages > 0 {
		parts = append(parts, fmt.Sprintf("%d messages", q.MaxMessages))
	}
	if q.MaxBytes > 0 {
		parts = append(parts, fmt.Sprintf("%d bytes", q.MaxBytes))
	}
	return strings.Join(parts, ", ")
}

type ackWrite struct {
	sub relay.Subscriber
	id  string
	ch  chan relay.AckResult
	res relay.AckResult
}

func (a *ackWrite) kind() string { return "ack" }
func (a *ackWrite) size() int    { return 0 }

func (a *ackWrite) deliver(err error) {
	if err != nil {
		a.ch <- relay.AckResult{Err: err}
		return
	}
	a.ch <- a.res
}

func (a *ackWrite) apply(t *wtx) error {
	a.res = relay.AckResult{}
	if a.sub.Peer {
		// The common case first: the recipient's first ack of a message
		// put lately, which needs no lookup.
		if r, ok := t.s.recent.byID[a.id]; ok {
			res, err := t.stmt(stmtAckRecent).ExecContext(t.ctx, r.seq, a.id, a.sub.ID)
			if err != nil {
				return fmt.Errorf("ack %s: mark recipient-acked: %w", a.id, err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return fmt.Errorf("ack %s: mark recipient-acked: %w", a.id, err)
			} else if n == 1 {
				a.res = relay.AckResult{Found: true, ByRecipient: true, Recipient: a.sub.ID}
				t.addUsage(r.key, -1, -r.size)
				return nil
			}
			// Acked before, swept, or another recipient's: look it up.
		}
		var (
			key       string
			size, seq int64
		)
		err := t.stmt(stmtAckRecipient).QueryRowContext(t.ctx, a.id, a.sub.ID).Scan(&seq, &key, &size)
		if err == nil {
			_, err = t.stmt(stmtAckMark).ExecContext(t.ctx, seq)
		}
		switch {
		case err == nil:
			a.res = relay.AckResult{Found: true, ByRecipient: true, Recipient: a.sub.ID}
			t.addUsage(key, -1, -size)
			return nil
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("ack %s: mark recipient-acked: %w", a.id, err)
		}
	}
	var (
		seq       int64
		recipient string
	)
	err := t.stmt(stmtAckLookup).QueryRowContext(t.ctx, a.id).Scan(&seq, &recipient)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil // not stored (never, or swept): not an error
	case err != nil:
		return fmt.Errorf("ack %s: look up: %w", a.id, err)
	}
	a.res.Found, a.res.Recipient = true, recipient
	if a.sub.Peer && a.sub.ID == recipient {
		a.res.ByRecipient = true // acked before: a no-op
		return nil
	}
	// An anonymous userID, or a peer acking a message addressed to another
	// peer that shares its key (it is never replayed to that peer anyway).
	if _, err := t.stmt(stmtAckInsert).ExecContext(t.ctx, seq, a.sub.Peer, a.sub.ID); err != nil {
		return fmt.Errorf("ack %s: insert: %w", a.id, err)
	}
	return nil
}

// sweepSQL deletes one step of expired messages, oldest first, and returns
// what the usage counters need to know of them.
const sweepSQL = `
	DELETE FROM messages WHERE seq IN (
		SELECT seq FROM messages WHERE stored_at < ? ORDER BY stored_at LIMIT ?)
	RETURNING key, size, recipient_acked`

type sweepResult struct {
	n   int
	err error
}

type sweepWrite struct {
	cutoff int64
	limit  int
	ch     chan sweepResult
	n      int
}

func (w *sweepWrite) kind() string { return "sweep" }
func (w *sweepWrite) size() int    { return 0 }

func (w *sweepWrite) deliver(err error) { w.ch <- sweepResult{n: w.n, err: err} }

func (w *sweepWrite) apply(t *wtx) error {
	w.n = 0
	// Acks go with their message (ON DELETE CASCADE).
	rows, err := t.tx.QueryContext(t.ctx, sweepSQL, w.cutoff, w.limit)
	if err != nil {
		return fmt.Errorf("sweep: delete: %w", err)
	}
	unacked := make(map[string]usage)
	var total usage
	for rows.Next() {
		var (
			key   string
			size  int64
			acked bool
		)
		if err := rows.Scan(&key, &size, &acked); err != nil {
			rows.Close()
			return fmt.Errorf("sweep: %w", err)
		}
		total.n++
		total.b += size
		if !acked {
			u := unacked[key]
			unacked[key] = usage{u.n + 1, u.b + size}
		}
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	for key, u := range unacked {
		t.addUsage(key, -u.n, -u.b)
	}
	t.totals.n -= total.n
	t.totals.b -= total.b
	w.n = int(total.n)
	return nil
}
