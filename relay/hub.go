package relay

import (
	"sync"
	"time"

	"courier/wire"
)

// hub knows which connections are subscribed to what, and pushes committed
// messages to them.
type hub struct {
	mu     sync.RWMutex
	byKey  map[string]map[*conn]struct{} // level-1 (anonymous) subscribers
	byPeer map[string]*conn              // level-2 subscribers, by canonical peer ID
}

func newHub() *hub {
	return &hub{
		byKey:  make(map[string]map[*conn]struct{}),
		byPeer: make(map[string]*conn),
	}
}

// subscribe registers c, in replay mode (see conn.deliver). For a level-2
// connection it returns the older connection of the same peer, which the
// caller closes.
func (h *hub) subscribe(c *conn) (replaced *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.sub.Peer {
		replaced = h.byPeer[c.sub.ID]
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

// waiters holds the level-2 publishes that wait for their recipient's ack.
type waiters struct {
	mu     sync.Mutex
	byID   map[string][]*waiter
	closed bool
}

type waiter struct {
	c     *conn
	id    string
	ref   string
	timer *time.Timer
}

func newWaiters() *waiters {
	return &waiters{byID: make(map[string][]*waiter)}
}

// add registers a wait for message id on behalf of publisher c. After d
// without an ack, c is answered queued.
func (ws *waiters) add(c *conn, id, ref string, d time.Duration) *waiter {
	w := &waiter{c: c, id: id, ref: ref}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.closed {
		return nil
	}
	ws.byID[id] = append(ws.byID[id], w)
	w.timer = time.AfterFunc(d, func() {
		if ws.remove(w) {
			w.c.publishResult(w.id, w.ref, wire.StatusQueued, "")
		}
	})
	return w
}

// remove unregisters w and reports whether it was still waiting.
func (ws *waiters) remove(w *waiter) bool {
	if w == nil {
		return false
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
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
	ws.mu.Unlock()
	for _, w := range list {
		w.c.publishResult(w.id, w.ref, wire.StatusDelivered, "")
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
}
