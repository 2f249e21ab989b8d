package relay

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"courier/wire"
)

// hub knows which connections are subscribed to what, and pushes messages
// to them: new ones while their commit runs (pushEarly), republished ones
// once committed (push).
//
// A connection is first replaying (reading the store), then live. The
// replay cannot see a message whose commit has not finished, so the hub
// keeps the messages pushed before their commit in inflight until their
// commit is settled; goLive hands a connection the ones it needs under
// the same lock as pushEarly, and settle makes a replay that has not
// gone live read the store again. Each message reaches each connection
// once: pushed live, handed over at goLive, or read by the replay.
type hub struct {
	mu       sync.RWMutex
	byKey    map[string]map[*conn]struct{} // level-1 (anonymous) subscribers
	byPeer   map[string]*conn              // level-2 subscribers, by canonical peer ID
	inflight map[seqKey]*inflightMsg       // pushed, commit not settled
	// newer holds the generations other instances announced for peers
	// this hub held no connection of, for newerKeep: a connection of
	// ours whose generation was taken before such an announcement but
	// that subscribes after it is older, and is replaced at subscribe.
	newer map[string]newerGen
}

// newerGen is a generation announced by another instance, and when.
type newerGen struct {
	gen int64
	at  time.Time
}

// newerKeep is how long the hub remembers another instance's
// announcement: longer than a connection takes from its generation
// (one store round trip, bounded by the store's timeout) to its
// subscribe.
const newerKeep = 30 * time.Second

// newerMax bounds the remembered announcements; beyond it the oldest
// half-minute's are dropped first (see rememberNewer).
const newerMax = 1 << 16

// seqKey names a message by its subscription key and Seq: a store shared
// by instances numbers each key on its own (Seq increases per key), so a
// Seq alone is not unique, and Seqs are compared only within a key.
type seqKey struct {
	key string
	seq int64
}

// inflightMsg is a message pushed before its commit.
type inflightMsg struct {
	m     Message
	frame func() []byte // its delivery frame, encoded once, under hub.mu
}

func newHub() *hub {
	return &hub{
		byKey:    make(map[string]map[*conn]struct{}),
		byPeer:   make(map[string]*conn),
		inflight: make(map[seqKey]*inflightMsg),
		newer:    make(map[string]newerGen),
	}
}

// forSubscribers calls f for the subscribers of m: the anonymous ones of
// its key and the authenticated connection of its recipient. h.mu is held.
func (h *hub) forSubscribers(m Message, f func(*conn)) {
	for c := range h.byKey[m.Key] {
		f(c)
	}
	if c := h.byPeer[m.Recipient]; c != nil {
		f(c)
	}
}

// pushEarly hands a new message to its live subscribers while its commit
// runs, and keeps it for the ones still replaying until settle.
func (h *hub) pushEarly(m Message) {
	var frame []byte
	e := &inflightMsg{m: m, frame: func() []byte {
		if frame == nil {
			frame = wire.DeliveryFrame(m.ID, m.Ciphertext)
		}
		return frame
	}}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inflight[seqKey{m.Key, m.Seq}] = e
	h.forSubscribers(m, func(c *conn) { c.deliverEarly(m.Seq, m.ID, e.frame) })
}

// settle drops a message pushed early from inflight once its commit has
// an outcome; a connection still replaying then reads the store again.
// (After a failed commit the store may give its Seq to another message:
// that one's entry stays.)
func (h *hub) settle(m Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.inflight[seqKey{m.Key, m.Seq}]; e != nil && e.m.ID == m.ID {
		delete(h.inflight, seqKey{m.Key, m.Seq})
	}
	h.forSubscribers(m, (*conn).committed)
}

// goLive switches c from replaying to live, having replayed up to Seq
// after, unless a commit settled meanwhile (missed) and not force: then
// the replay reads again and goLive reports false. Going live, c gets the
// messages pushed before their commit that the replay could not see,
// oldest first.
func (h *hub) goLive(c *conn, after int64, force bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.missed && !force {
		c.missed = false
		return false
	}
	c.missed = false
	c.live = true
	c.replayedTo = after
	var mine []*inflightMsg
	for _, e := range h.inflight {
		if e.m.Seq > after && (e.m.Recipient == c.sub.ID && c.sub.Peer || !c.sub.Peer && e.m.Key == c.key) {
			mine = append(mine, e)
		}
	}
	slices.SortFunc(mine, func(a, b *inflightMsg) int { return cmp.Compare(a.m.Seq, b.m.Seq) })
	for _, e := range mine {
		c.pushLive(e.m.ID, e.frame())
	}
	return true
}

// subscribe registers c, in replay mode (see conn.deliver), and calls
// first while no message can reach c: the subscribe answer goes into c's
// queue then, ahead of any push, and a client that has read it is already
// known to every publish (which looks at the hub under the same lock), so
// a publish made after it is never answered "not connected". For a
// level-2 connection it returns the older connection of the same peer,
// which the caller closes: by the Bus's generations, so c itself when the
// hub already holds a newer one (two connections of a peer whose
// subscribes reach the hub in the other order than they were announced);
// c is then not registered. Without a Bus (generations 0) the later
// subscribe is the newer.
func (h *hub) subscribe(c *conn, first func()) (replaced *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	first()
	if c.sub.Peer {
		replaced = h.byPeer[c.sub.ID]
		if replaced != nil && replaced.gen > c.gen {
			return c
		}
		if n, ok := h.newer[c.sub.ID]; ok {
			delete(h.newer, c.sub.ID)
			if n.gen > c.gen && time.Since(n.at) < newerKeep {
				return c // announced elsewhere after c's generation was taken
			}
		}
		h.byPeer[c.sub.ID] = c
		return replaced
	}
	set := h.byKey[c.key]
	if set == nil {
		set = make(map[*conn]struct{})
		h.byKey[c.key] = set
	}
	set[c] = struct{}{}
	return nil
}

func (h *hub) unsubscribe(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.sub.Peer {
		if h.byPeer[c.sub.ID] == c {
			delete(h.byPeer, c.sub.ID)
		}
		return
	}
	if set := h.byKey[c.key]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(h.byKey, c.key)
		}
	}
}

// replaceOlder closes the peer's connection if it is older than
// generation gen (a newer one exists on another instance).
// Without a connection of the peer here, it remembers gen a while, for a
// connection of the peer whose subscribe is on its way (see subscribe).
func (h *hub) replaceOlder(peer string, gen int64) {
	h.mu.Lock()
	c := h.byPeer[peer]
	if c == nil {
		h.rememberNewer(peer, gen, time.Now())
	}
	h.mu.Unlock()
	if c != nil && c.gen < gen {
		c.closeWith(wire.CloseReplaced, "replaced by a newer connection of the same peer", false, "replaced")
	}
}

// rememberNewer records gen for peer; h.mu is held. When the map is
// full it first drops what is older than newerKeep, then, if still full,
// everything: a forgotten announcement costs only the presence refresh's
// later replacement.
func (h *hub) rememberNewer(peer string, gen int64, now time.Time) {
	if n, ok := h.newer[peer]; ok && n.gen >= gen {
		return
	}
	if len(h.newer) >= newerMax {
		for p, n := range h.newer {
			if now.Sub(n.at) >= newerKeep {
				delete(h.newer, p)
			}
		}
		if len(h.newer) >= newerMax {
			clear(h.newer)
		}
	}
	h.newer[peer] = newerGen{gen: gen, at: now}
}

// peerConnected reports whether the peer has an authenticated connection.
func (h *hub) peerConnected(canonical string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.byPeer[canonical] != nil
}

// push hands a committed message to its subscribers: the anonymous ones of
// its key and the authenticated connection of its recipient. A republished
// message (existing) goes to the recipient's authenticated connection only:
// anonymous subscribers had it when it was first stored, and may have acked
// it since.
func (h *hub) push(m Message, existing bool) {
	var frame []byte
	enc := func() []byte {
		if frame == nil {
			frame = wire.DeliveryFrame(m.ID, m.Ciphertext)
		}
		return frame
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	if !existing {
		for c := range h.byKey[m.Key] {
			c.deliver(m.Seq, m.ID, enc, false)
		}
	}
	if c := h.byPeer[m.Recipient]; c != nil {
		c.deliver(m.Seq, m.ID, enc, existing)
	}
}

// each calls f for every subscribed connection.
func (h *hub) each(f func(*conn)) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, set := range h.byKey {
		for c := range set {
			f(c)
		}
	}
	for _, c := range h.byPeer {
		f(c)
	}
}

// waiters holds the level-2 publishes that wait for their recipient's ack,
// and the "fallback":"relay" publishes that wait for their hand-off.
type waiters struct {
	mu       sync.Mutex
	byID     map[string][]*waiter
	handoffs map[string][]*handoffWait
	closed   bool
	// Recipient acks heard from other instances while nobody here waited
	// for them, kept for a while: with several instances the recipient's
	// ack can arrive (over the Bus) before this instance has heard its own
	// put's outcome and registered the wait (see resolveRemote).
	recent  map[string]time.Time
	recentQ []recentAck // recent, oldest first
}

// recentAck is an entry of waiters.recent.
type recentAck struct {
	id string
	at time.Time
}

type waiter struct {
	c     *conn
	id    string
	ref   string
	timer *time.Timer
	// Under waiters.mu. committed: the publish has committed, so queued
	// may be answered. expired: the wait ended before the commit; queued
	// is answered at the commit (waiters.committed). then, if set, is
	// called instead of answering queued (a fallback publish goes on to
	// wait for its hand-off).
	committed, expired bool
	then               func()
}

// handoffWait is a "fallback":"relay" publish that waits for the outcome
// of its hand-off.
type handoffWait struct {
	c     *conn
	id    string
	ref   string
	timer *time.Timer
}

func newWaiters() *waiters {
	return &waiters{byID: make(map[string][]*waiter), handoffs: make(map[string][]*handoffWait), recent: make(map[string]time.Time)}
}

// maxRecentAcks bounds waiters.recent; beyond it the oldest are dropped
// (their publishes then answer queued, as without the record).
const maxRecentAcks = 1 << 18

// resolveRemote is resolve for an ack made on another instance. If
// nobody waits for id yet, it is remembered for keep, so that a wait
// registered within that time is answered delivered at once.
func (ws *waiters) resolveRemote(id string, now time.Time, keep time.Duration) {
	ws.mu.Lock()
	if len(ws.byID[id]) == 0 && len(ws.handoffs[id]) == 0 && !ws.closed {
		for len(ws.recentQ) > 0 && (now.Sub(ws.recentQ[0].at) > keep || len(ws.recentQ) >= maxRecentAcks) {
			if ws.recent[ws.recentQ[0].id].Equal(ws.recentQ[0].at) {
				delete(ws.recent, ws.recentQ[0].id)
			}
			ws.recentQ = ws.recentQ[1:]
		}
		ws.recent[id] = now
		ws.recentQ = append(ws.recentQ, recentAck{id, now})
		if cap(ws.recentQ) > 2*maxRecentAcks {
			ws.recentQ = append([]recentAck(nil), ws.recentQ...)
		}
		ws.mu.Unlock()
		return
	}
	ws.mu.Unlock()
	ws.resolve(id)
}

// add registers a wait for message id on behalf of publisher c. After d
// without an ack, c is answered queued (or then is called): at once if the
// publish has committed, else once it has (committed). An ack resolves it
// delivered, committed or not.
func (ws *waiters) add(c *conn, id, ref string, d time.Duration, committed bool, then func()) *waiter {
	w := &waiter{c: c, id: id, ref: ref, committed: committed, then: then}
	ws.mu.Lock()
	if ws.closed {
		ws.mu.Unlock()
		return nil
	}
	if _, ok := ws.recent[id]; ok {
		// Acked on another instance already: delivered now. w is in no
		// list, so committed and remove find nothing to do.
		delete(ws.recent, id)
		ws.mu.Unlock()
		c.publishResult(id, ref, wire.StatusDelivered, "")
		return w
	}
	defer ws.mu.Unlock()
	ws.byID[id] = append(ws.byID[id], w)
	w.timer = time.AfterFunc(d, func() {
		ws.mu.Lock()
		if !ws.removeLocked(w) {
			ws.mu.Unlock()
			return
		}
		answer := w.committed
		w.expired = !answer
		then := w.then
		ws.mu.Unlock()
		if answer {
			w.answerQueued(then)
		}
	})
	return w
}

func (w *waiter) answerQueued(then func()) {
	if then != nil {
		then()
		return
	}
	w.c.publishResult(w.id, w.ref, wire.StatusQueued, "")
}

// committed notes that w's publish has committed, and what to do instead
// of answering queued (then, may be nil); if its wait has expired, that
// happens now.
func (ws *waiters) committed(w *waiter, then func()) {
	ws.mu.Lock()
	w.committed = true
	w.then = then
	answer := w.expired
	w.expired = false
	ws.mu.Unlock()
	if answer {
		w.answerQueued(then)
	}
}

// remove unregisters w, which is answered nothing, and reports whether it
// was still waiting.
func (ws *waiters) remove(w *waiter) bool {
	if w == nil {
		return false
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w.expired = false
	return ws.removeLocked(w)
}

func (ws *waiters) removeLocked(w *waiter) bool {
	list := ws.byID[w.id]
	for i, x := range list {
		if x == w {
			list = append(list[:i], list[i+1:]...)
			if len(list) == 0 {
				delete(ws.byID, w.id)
			} else {
				ws.byID[w.id] = list
			}
			w.timer.Stop()
			return true
		}
	}
	return false
}

// resolve answers delivered to every publisher waiting for id: the
// recipient's ack of it has committed.
func (ws *waiters) resolve(id string) {
	ws.mu.Lock()
	list := ws.byID[id]
	delete(ws.byID, id)
	for _, w := range list {
		w.timer.Stop()
	}
	hl := ws.takeHandoffsLocked(id)
	ws.mu.Unlock()
	for _, w := range list {
		w.c.publishResult(w.id, w.ref, wire.StatusDelivered, "")
	}
	for _, h := range hl {
		h.c.publishResult(h.id, h.ref, wire.StatusDelivered, "")
	}
}

// awaitHandoff registers a fallback publish of message id that waits for
// the outcome of its hand-off (handedOff) or its recipient's ack
// (resolve). If neither comes within d, check says what to answer (the
// hand-off may have been made by another instance).
func (ws *waiters) awaitHandoff(c *conn, id, ref string, d time.Duration, check func() string) {
	h := &handoffWait{c: c, id: id, ref: ref}
	ws.mu.Lock()
	if ws.closed {
		ws.mu.Unlock()
		return
	}
	if _, ok := ws.recent[id]; ok {
		// Acked on another instance already (see resolveRemote).
		delete(ws.recent, id)
		ws.mu.Unlock()
		c.publishResult(id, ref, wire.StatusDelivered, "")
		return
	}
	defer ws.mu.Unlock()
	ws.handoffs[id] = append(ws.handoffs[id], h)
	h.timer = time.AfterFunc(d, func() {
		ws.mu.Lock()
		found := false
		list := ws.handoffs[id]
		for i, x := range list {
			if x == h {
				found = true
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(ws.handoffs, id)
		} else {
			ws.handoffs[id] = list
		}
		ws.mu.Unlock()
		if found {
			h.c.publishResult(h.id, h.ref, check(), "")
		}
	})
}

// takeHandoffsLocked removes and returns the hand-off waits for id,
// their timers stopped; ws.mu is held.
func (ws *waiters) takeHandoffsLocked(id string) []*handoffWait {
	list := ws.handoffs[id]
	delete(ws.handoffs, id)
	for _, h := range list {
		h.timer.Stop()
	}
	return list
}

// handedOff answers the fallback publishes waiting for message id's
// hand-off: offline when it was handed off, else queued (an attempt
// failed; the bridge goes on in the background).
func (ws *waiters) handedOff(id string, ok bool) {
	ws.mu.Lock()
	list := ws.takeHandoffsLocked(id)
	ws.mu.Unlock()
	status := wire.StatusQueued
	if ok {
		status = wire.StatusOffline
	}
	for _, h := range list {
		h.c.publishResult(h.id, h.ref, status, "")
	}
}

// close stops every timer; nobody is answered (the connections are closing).
func (ws *waiters) close() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.closed = true
	for id, list := range ws.byID {
		for _, w := range list {
			w.timer.Stop()
		}
		delete(ws.byID, id)
	}
	for id := range ws.handoffs {
		ws.takeHandoffsLocked(id)
	}
}
