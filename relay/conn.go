package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"courier/wire"
)

// Close codes the server uses besides the protocol's own (wire.CloseReplaced,
// wire.CloseServiceRestart).
const (
	closePolicy   = websocket.StatusPolicyViolation // subscribe failures and timeouts
	closeSlow     = websocket.StatusTryAgainLater   // send queue full: reconnect to replay
	closeInternal = websocket.StatusInternalError   // the store failed
)

// closeGrace bounds the close handshake: a client that has not answered
// our close frame by then is dropped.
const closeGrace = 2 * time.Second

// A replay reads stored messages in pages of at most replayPage messages
// and at most replayPageBytes of ciphertext, counting every message at
// the largest size allowed (limits.max_message_bytes): a page is loaded
// before its sizes are known, and its bound must hold whatever was stored.
// With the default 4 MiB limit that is 2 messages a page; with 32 KiB or
// less, replayPage.
const (
	replayPage      = 256
	replayPageBytes = 8 << 20
)

// replayLimit is the page size of a replay.
func replayLimit(maxMessageBytes int) int {
	return min(max(replayPageBytes/max(maxMessageBytes, 1), 1), replayPage)
}

// maxUserIDBytes bounds a level-1 userID.
const maxUserIDBytes = 512

// conn is one WebSocket connection. Its goroutines: the reader (which runs
// serve, started by Server.serveWebSocket), the writer, the processor
// (started with the first publish or ack) and, after a subscribe, the
// replay. serve waits for all of them before it returns.
type conn struct {
	srv    *Server
	ws     *websocket.Conn
	id     uint64
	log    *slog.Logger
	ctx    context.Context // ends when the connection is torn down
	cancel context.CancelFunc
	q      *sendQueue
	wg     sync.WaitGroup // writer, processor, replay

	subscribed atomic.Bool
	subTimer   *time.Timer
	addr       *clientState // the client address's limits, counted for max_connections_per_ip

	// Reader-owned state.
	work       chan job     // to the processor; made with the first write
	inflight   *byteBudget  // limits.max_inflight_bytes_per_connection; made with work
	peerState  *clientState // the authenticated peer's limits; released by the server
	ackLimiter *rate.Limiter
	nonce      string // the outstanding AuthChallenge nonce, "" when none
	noncePeer  string // canonical peer ID the nonce was issued for
	nonceAt    time.Time

	// Set by the reader at subscribe, before the hub or the replay see
	// the connection; read-only afterwards.
	sub    Subscriber
	key    string
	level2 bool
	gen    int64 // a level-2 connection's generation from the Bus (0 without one)

	// Delivery state: see deliver and replay.
	dmu        sync.Mutex
	live       bool
	missed     bool
	replayedTo int64

	sent sentIDs // messages sent on this connection and not acked yet
}

// job is a write the processor waits for, in the order the reader issued it.
type job struct {
	put    <-chan PutResult
	ack    <-chan AckResult
	msg    Message // the message put, for a put
	cost   int64   // in-flight bytes held for a put, on the connection and globally
	id     string
	ref    string
	level2 bool // answer with a PublishResult
	early  *earlyPut
	// handoff: put through the OFFLINE bridge (PutHandoff), due then.
	// fallback: a level-2 "fallback":"relay" publish, answered offline
	// once handed off.
	handoff, fallback bool
	due               time.Time
}

// earlyPut is what a put did before its commit (see pushEarly). The
// store's announcer goroutine writes it before the put's result is sent;
// the processor reads it after receiving the result.
type earlyPut struct {
	pushed bool    // the new message was pushed before its commit
	msg    Message // as stored, with its Seq
	w      *waiter // the wait for the recipient's ack, if it was connected
}

// serve runs the connection until it ends; its goroutine is the reader.
func (c *conn) serve() {
	s := c.srv
	c.ws.SetReadLimit(wire.MaxFrameBytes(s.cfg.Limits.MaxMessageBytes))
	c.subTimer = time.AfterFunc(s.cfg.Limits.SubscribeTimeout, c.subscribeTimeout)
	c.wg.Add(1)
	go c.writeLoop()

	c.readLoop()

	// Teardown: stop pushes to this connection, let the processor finish the
	// writes it waits for (they are pushed to other subscribers), and wait.
	c.subTimer.Stop()
	c.q.requestClose(closeRequest{code: websocket.StatusNormalClosure})
	if c.subscribed.Load() {
		s.hub.unsubscribe(c)
		if s.bus != nil && c.level2 {
			s.bus.PeerDisconnected(c.sub.ID, c.key, c.gen)
		}
	}
	if c.work != nil {
		close(c.work)
	}
	c.cancel()
	c.wg.Wait()
	if c.subscribed.Load() {
		s.metrics.subscriptions.WithLabelValues(c.levelLabel()).Dec()
	}
}

func (c *conn) levelLabel() string {
	if c.level2 {
		return "2"
	}
	return "1"
}

// closeWith ends the connection with code and reason (at most 123 bytes).
// With flush, what is queued is written first (an error answer before
// the close). Safe from any goroutine; only the first call counts.
func (c *conn) closeWith(code websocket.StatusCode, reason string, flush bool, metric string) {
	if c.q.requestClose(closeRequest{code: code, reason: reason, flush: flush}) {
		c.srv.metrics.disconnects.WithLabelValues(metric).Inc()
		c.log.Debug("closing connection", "code", int(code), "reason", reason)
	}
}

// maxReasonBytes bounds an error reason sent to a client: reasons quote
// client input (a parse error may name an unknown Type), and an answer
// must not echo a large frame back.
const maxReasonBytes = 256

// clipReason cuts reason to maxReasonBytes, marking the cut.
func clipReason(reason string) string {
	if len(reason) <= maxReasonBytes {
		return reason
	}
	cut := maxReasonBytes
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return reason[:cut] + "…"
}

// isSubscribeAttempt reports whether a frame that failed to parse was
// meant as a SubscribeMessage: its Type says so, or it has no Type and
// carries the fields of the bare form. Only called on the error path.
func isSubscribeAttempt(b []byte) bool {
	var env struct {
		Type            *string         `json:"Type"`
		UserID          json.RawMessage `json:"userID"`
		SubscriptionKey json.RawMessage `json:"subscriptionKey"`
	}
	if json.Unmarshal(b, &env) != nil {
		return false
	}
	if env.Type != nil {
		return *env.Type == wire.TypeSubscribe
	}
	return env.UserID != nil || env.SubscriptionKey != nil
}

// fail answers a subscribe failure with {"error": …} and closes.
func (c *conn) fail(metric, reason string) {
	c.srv.metrics.rejected.WithLabelValues(metric).Inc()
	_ = c.q.push(outFrame{b: wire.ErrorFrame(clipReason(reason))})
	c.closeWith(closePolicy, "subscribe failed", true, "subscribe_failed")
}

// reject answers a per-frame problem without closing: {"error": …} for a
// level-1 connection, {"Type":"Error",…} for a level-2 one.
func (c *conn) reject(metric, reason string) {
	c.srv.metrics.rejected.WithLabelValues(metric).Inc()
	reason = clipReason(reason)
	b := wire.ErrorFrame(reason)
	if c.level2 {
		b = wire.Level2ErrorFrame(reason)
	}
	c.send(b)
}

// send queues a frame that must not be dropped silently: if the client
// does not read its answers, it is disconnected.
func (c *conn) send(b []byte) {
	if err := c.q.push(outFrame{b: b}); errors.Is(err, errQueueFull) {
		c.closeWith(closeSlow, "send queue full: the client does not read", false, "slow_consumer")
	}
}

func (c *conn) subscribeTimeout() {
	if c.subscribed.Load() {
		return
	}
	_ = c.q.push(outFrame{b: wire.ErrorFrame("no SubscribeMessage within " + c.srv.cfg.Limits.SubscribeTimeout.String() + " of connecting")})
	c.closeWith(closePolicy, "subscribe timeout", true, "subscribe_timeout")
}

func (c *conn) readLoop() {
	for {
		err := c.readFrame()
		if err == nil {
			continue
		}
		switch {
		case errors.Is(err, websocket.ErrMessageTooBig):
			c.srv.metrics.rejected.WithLabelValues(rejectFrameSize).Inc()
			c.srv.metrics.disconnects.WithLabelValues("frame_too_large").Inc()
			c.log.Debug("frame too large", "limit", wire.MaxFrameBytes(c.srv.cfg.Limits.MaxMessageBytes))
		case websocket.CloseStatus(err) != -1:
			c.log.Debug("client closed", "code", int(websocket.CloseStatus(err)))
		default:
			c.log.Debug("read ended", "err", err)
		}
		return
	}
}

// readBufs holds frame buffers between frames, so that an idle connection
// holds none.
var readBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readFrame reads and handles one frame. The frame's fields are copied out
// while parsing, so its buffer is reused.
func (c *conn) readFrame() error {
	_, r, err := c.ws.Reader(c.ctx)
	if err != nil {
		return err
	}
	buf := readBufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 64<<10 { // let a large frame's buffer go
			readBufs.Put(buf)
		}
	}()
	if _, err := buf.ReadFrom(r); err != nil {
		return err
	}
	if !c.q.closing() { // else read on until the close handshake ends
		c.handle(buf.Bytes())
	}
	return nil
}

func (c *conn) handle(b []byte) {
	f, err := wire.ParseClientFrame(b)
	if err != nil {
		if !c.subscribed.Load() && isSubscribeAttempt(b) {
			// A subscribe refused for any reason closes (PROTOCOL.md),
			// also one whose fields have the wrong JSON types.
			c.fail(rejectMalformed, wire.ReasonInvalid+err.Error())
			return
		}
		c.reject(rejectMalformed, wire.ReasonInvalid+err.Error())
		return
	}
	switch f.Type {
	case wire.TypeSubscribe:
		c.handleSubscribe(f.Subscribe)
	case wire.TypeAuthRequest:
		c.handleAuthRequest(f.AuthRequest)
	case wire.TypeAck:
		c.handleAck(f.Ack)
	case wire.TypePublish:
		c.handlePublish(f.Publish)
	}
}

func (c *conn) handleAuthRequest(a *wire.AuthRequest) {
	if c.subscribed.Load() {
		c.reject(rejectState, wire.ReasonInvalid+"AuthRequest after subscribing; open a new connection to authenticate")
		return
	}
	peer, err := wire.ParsePeerID(a.PeerID)
	if err != nil {
		c.fail(rejectAuth, "AuthRequest: "+err.Error())
		return
	}
	var raw [32]byte
	_, _ = rand.Read(raw[:]) // crypto/rand.Read never fails
	c.nonce = base64.StdEncoding.EncodeToString(raw[:])
	c.noncePeer = peer.Canonical()
	c.nonceAt = c.srv.now()
	c.send(wire.ChallengeFrame(wire.AuthChallenge{Nonce: c.nonce, Host: c.srv.cfg.PublicHost}))
}

func (c *conn) handleSubscribe(s *wire.Subscribe) {
	if c.subscribed.Load() {
		c.reject(rejectState, wire.ReasonInvalid+"already subscribed on this connection")
		return
	}
	if l := c.addr.subscribe; l != nil && !l.Allow() {
		c.srv.metrics.rejected.WithLabelValues(rejectRateLimited).Inc()
		_ = c.q.push(outFrame{b: wire.ErrorFrame(wire.ReasonRateLimited + "more than " +
			strconv.FormatFloat(c.srv.cfg.Limits.SubscribeRate, 'f', -1, 64) + " subscribes per second from your address; retry later")})
		c.closeWith(closeSlow, "subscribe rate limited", true, "subscribe_rate_limited")
		return
	}
	switch s.Protocol {
	case 0:
		if s.UserID == "" {
			c.fail(rejectInvalid, "userID is empty")
			return
		}
		if len(s.UserID) > maxUserIDBytes {
			c.fail(rejectInvalid, fmt.Sprintf("userID is longer than %d bytes", maxUserIDBytes))
			return
		}
		if err := wire.ValidSubscriptionKey(s.SubscriptionKey); err != nil {
			c.fail(rejectInvalid, err.Error())
			return
		}
		c.sub = Subscriber{ID: s.UserID}
	case wire.ProtocolLevel2:
		nonce := c.nonce
		c.nonce = "" // single use, whatever the outcome
		if nonce == "" {
			c.fail(rejectAuth, "protocol 2 subscribe without an outstanding AuthChallenge: send AuthRequest first (each challenge is good for one subscribe)")
			return
		}
		if c.srv.now().Sub(c.nonceAt) > c.srv.cfg.Limits.NonceTTL {
			c.fail(rejectAuth, "the AuthChallenge expired (valid for "+c.srv.cfg.Limits.NonceTTL.String()+"); send a new AuthRequest")
			return
		}
		peer, err := wire.VerifyAuth(*s, c.srv.cfg.PublicHost, nonce)
		if err != nil {
			c.fail(rejectAuth, err.Error())
			return
		}
		if peer.Canonical() != c.noncePeer {
			c.fail(rejectAuth, "the AuthChallenge was issued for another peer ID")
			return
		}
		c.sub = Subscriber{Peer: true, ID: peer.Canonical()}
		c.level2 = true
		c.peerState = c.srv.clients.peer(c.sub.ID)
	default:
		c.fail(rejectInvalid, fmt.Sprintf("unknown protocol %d: this relay speaks 2, or none for level 1", s.Protocol))
		return
	}
	c.key = s.SubscriptionKey
	if c.level2 && c.srv.bus != nil {
		// Announced to the other instances, which close the peer's older
		// connections (4409); generations order them across instances.
		gen, err := c.srv.bus.PeerConnected(c.ctx, c.sub.ID, c.key)
		if err != nil {
			c.srv.metrics.rejected.WithLabelValues(rejectAuth).Inc()
			c.log.Error("announcing the connection failed", "err", err)
			_ = c.q.push(outFrame{b: wire.ErrorFrame("the relay cannot reach its store; retry in a moment")})
			c.closeWith(closeInternal, "store error", true, "store_error")
			return
		}
		c.gen = gen
	}
	c.subscribed.Store(true)
	c.subTimer.Stop()
	if c.level2 {
		c.srv.logClient(c.log, "subscribed", []any{"peer", c.sub.ID, "key", c.key}, "level", 2)
	} else {
		c.srv.logClient(c.log, "subscribed", []any{"key", c.key}, "level", 1)
	}
	old := c.srv.hub.subscribe(c, func() { c.send(wire.SubscribeOK) })
	c.srv.metrics.subscriptions.WithLabelValues(c.levelLabel()).Inc() // serve's teardown takes it back
	if old != nil {
		old.closeWith(wire.CloseReplaced, "replaced by a newer connection of the same peer", false, "replaced")
		if old == c { // a newer connection of the peer was here first
			return
		}
	}
	c.wg.Add(1)
	go c.replay()
}

func (c *conn) handleAck(a *wire.Ack) {
	if !c.subscribed.Load() {
		c.reject(rejectState, wire.ReasonInvalid+"AckMessage before SubscribeMessage: an ack needs a subscriber")
		return
	}
	if !wire.ValidMessageID(a.MessageID) {
		c.reject(rejectInvalid, wire.ReasonInvalid+"messageID is not a message ID (64 lowercase hex digits)")
		return
	}
	// An ack of a message this connection was sent costs what the send
	// cost; any other is rate-limited, so that a connection cannot make
	// the relay write ack rows faster than it was sent messages.
	if !c.sent.take(a.MessageID) {
		lim := c.srv.cfg.Limits
		if c.ackLimiter == nil && lim.AckRate > 0 {
			c.ackLimiter = rate.NewLimiter(rate.Limit(lim.AckRate), lim.AckBurst)
		}
		if c.ackLimiter != nil && !c.ackLimiter.Allow() {
			c.reject(rejectRateLimited, wire.ReasonRateLimited+"more than "+strconv.FormatFloat(lim.AckRate, 'f', -1, 64)+
				" acks per second of messages not sent on this connection; this ack was not recorded, ack messages as they arrive")
			return
		}
	}
	c.enqueue(job{ack: c.srv.store.Ack(c.sub, a.MessageID), id: a.MessageID})
}

func (c *conn) handlePublish(p *wire.Publish) {
	level2 := c.level2 // only a fully authenticated connection gets results
	lim := c.srv.cfg.Limits
	// Limited per authenticated peer (over all its connections), else per
	// client address: not per connection, which would cap a node's sidecar
	// (one connection) like one light client.
	limiter, who, r := c.addr.publish, "from your address", lim.PublishRate
	if c.peerState != nil {
		limiter, who = c.peerState.publish, "from your peer ID"
	} else {
		r, _ = lim.anonymousPublish()
	}
	if limiter != nil && !limiter.Allow() {
		c.publishRejected(level2, p.Ref, "", rejectRateLimited, wire.ReasonRateLimited+
			"more than "+strconv.FormatFloat(r, 'f', -1, 64)+" publishes per second "+who+"; retry later")
		return
	}
	peer, err := wire.ParsePeerID(p.Recipient)
	if err != nil {
		c.publishRejected(level2, p.Ref, "", rejectInvalid, wire.ReasonInvalid+"recipient: "+err.Error())
		return
	}
	ct, err := wire.DecodeCiphertext(p.EncryptedMessage, lim.MaxMessageBytes)
	if errors.Is(err, wire.ErrTooLarge) {
		c.publishRejected(level2, p.Ref, "", rejectTooLarge, wire.ReasonTooLarge+err.Error())
		return
	}
	if err != nil {
		c.publishRejected(level2, p.Ref, "", rejectInvalid, wire.ReasonInvalid+err.Error())
		return
	}
	fallback := false
	if level2 && p.Fallback != "" {
		if p.Fallback != wire.FallbackRelay {
			c.publishRejected(level2, p.Ref, "", rejectInvalid, wire.ReasonInvalid+
				fmt.Sprintf("fallback must be %q (the relay's OFFLINE bridge) or absent, got %q", wire.FallbackRelay, p.Fallback))
			return
		}
		fallback = true
	}
	cost, ok := c.acquireInflight(int64(len(ct)))
	if !ok {
		return // torn down while waiting
	}
	m := Message{
		ID:         wire.MessageID(ct),
		Key:        peer.SubscriptionKey(wire.RelayPrefixBits),
		Recipient:  peer.Canonical(),
		Ciphertext: ct,
	}
	j := job{msg: m, cost: cost, id: m.ID, ref: p.Ref, level2: level2, early: new(earlyPut)}
	// The bridge takes every level-1 publish (its publisher cannot fall
	// back itself) and the level-2 ones that ask for it.
	if b := c.srv.bridge; b != nil && (!level2 || fallback) {
		j.handoff, j.fallback = true, fallback
		j.due = c.srv.now().Add(c.srv.cfg.offlineAfter())
	}
	early := j // the callback's copy, without put (written below)
	push := func(r PutResult) { c.pushEarly(early, r) }
	if j.handoff {
		j.put = c.srv.bridge.store.PutHandoff(m, j.due, push)
	} else {
		j.put = c.srv.store.Put(m, push)
	}
	c.enqueue(j)
}

// afterWait is what a publish does when its wait for the recipient's ack
// ends without it: nil (answer queued), or for a fallback publish, wait
// for the hand-off.
func (c *conn) afterWait(j job, r PutResult) func() {
	if !j.fallback {
		return nil
	}
	return func() { c.awaitHandoff(j, r) }
}

// awaitHandoff answers a fallback publish whose recipient has not acked:
// offline once its hand-off is made, queued if an attempt fails (the
// bridge goes on) or no outcome comes within the hand-off's due time plus
// offline.timeout.
func (c *conn) awaitHandoff(j job, r PutResult) {
	s := c.srv
	switch r.Handoff {
	case HandoffDone:
		c.publishResult(j.id, j.ref, wire.StatusOffline, "")
		return
	case HandoffPending:
	default:
		c.publishResult(j.id, j.ref, wire.StatusQueued, "")
		return
	}
	b := s.bridge
	d := max(time.Until(j.due), 0) + b.cfg.Timeout + time.Second
	s.waiters.awaitHandoff(c, j.id, j.ref, d, func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if st, err := b.store.HandoffStatus(ctx, j.id); err == nil && st == HandoffDone {
			return wire.StatusOffline
		}
		return wire.StatusQueued
	})
}

// pushEarly runs when the store has decided that a put stores a new
// message, while its commit runs (from the store's announcer goroutine,
// in Seq order): the message goes to its subscribers now (PROTOCOL:
// "Durability: when each hop answers"). The wait for the recipient's ack
// starts here too, so an ack that comes before the commit counts;
// queued is answered only after the commit (finishPut). A republish
// (Existing) waits for its result, as before.
func (c *conn) pushEarly(j job, r PutResult) {
	if r.Existing {
		return
	}
	s := c.srv
	m := r.Message
	e := j.early
	e.pushed, e.msg = true, m
	if j.level2 && (r.RecipientOnline || s.hub.peerConnected(m.Recipient)) {
		// Registered before the push, so the recipient's ack cannot come first.
		e.w = s.waiters.add(c, j.id, j.ref, s.cfg.Limits.DeliveryWait, false, nil)
	}
	s.hub.pushEarly(m)
}

// publishRejected answers a publish that was not stored.
func (c *conn) publishRejected(level2 bool, ref, id, metric, reason string) {
	c.srv.metrics.rejected.WithLabelValues(metric).Inc()
	reason = clipReason(reason)
	if level2 {
		c.publishResult(id, ref, wire.StatusRejected, reason)
		return
	}
	c.send(wire.ErrorFrame(reason))
}

// publishResult answers a level-2 publish. Safe from any goroutine.
func (c *conn) publishResult(id, ref, status, reason string) {
	c.srv.metrics.publishResults.WithLabelValues(status).Inc()
	c.send(wire.PublishResultFrame(wire.PublishResult{ID: id, Ref: ref, Status: status, Reason: reason}))
}

// inflightOverhead is what a put holds besides its ciphertext (the
// message's fields, the job, the store's write), counted so that tiny
// messages are budgeted too.
const inflightOverhead = 512

// acquireInflight takes a put's bytes from the connection's and the
// global in-flight budgets, waiting (the reader pauses: back-pressure)
// until both have room. A publish is never dropped for want of budget:
// the client only sees its publishes slow down, and an honest client that
// waits for results gets them. It reports false when the connection was
// torn down while waiting; it then holds nothing.
func (c *conn) acquireInflight(size int64) (int64, bool) {
	c.startProcessor()
	// A message larger than a budget waits for all of it.
	n := min(size+inflightOverhead, c.inflight.max, c.srv.budget.max)
	if _, err := c.inflight.acquire(c.ctx, n); err != nil {
		return 0, false
	}
	if _, err := c.srv.budget.acquire(c.ctx, n); err != nil {
		c.inflight.release(n)
		return 0, false
	}
	return n, true
}

// releaseInflight gives back what acquireInflight took, once the put's
// result has arrived.
func (c *conn) releaseInflight(n int64) {
	c.inflight.release(n)
	c.srv.budget.release(n)
}

// startProcessor starts the processor with the first write.
func (c *conn) startProcessor() {
	if c.work == nil {
		c.work = make(chan job, c.srv.cfg.Limits.MaxInflight)
		c.inflight = newByteBudget(c.srv.cfg.Limits.MaxInflightBytesPerConnection)
		c.wg.Add(1)
		go c.process()
	}
}

// enqueue hands a write to the processor, starting it with the first one.
// When MaxInflight writes wait for their commit, the reader waits here: the
// client's own publishes are throttled, nobody else's.
func (c *conn) enqueue(j job) {
	c.startProcessor()
	c.work <- j
}

// process finishes the connection's writes in the order they were issued,
// as their commits come in. It runs until the reader is done and every
// write has its result, even when the connection is closed meanwhile: a
// committed message is still pushed to its subscribers.
func (c *conn) process() {
	defer c.wg.Done()
	for j := range c.work {
		if j.put != nil {
			r := <-j.put
			c.releaseInflight(j.cost)
			c.finishPut(j, r)
		} else {
			c.finishAck(j, <-j.ack)
		}
	}
}

func (c *conn) storeFailed(op string, err error) {
	if errors.Is(err, ErrClosed) {
		c.closeWith(wire.CloseServiceRestart, "server shutting down", false, "shutdown")
		return
	}
	c.log.Error("store "+op+" failed", "err", err)
	c.closeWith(closeInternal, "store error", false, "store_error")
}

func (c *conn) finishPut(j job, r PutResult) {
	s := c.srv
	if e := j.early; e != nil && e.pushed {
		// Pushed before the commit: the commit's outcome settles it.
		s.hub.settle(e.msg)
		if r.Err == nil {
			s.metrics.stored.Inc()
			c.wakeBridge(j, r)
			if j.level2 {
				switch {
				case e.w != nil:
					s.waiters.committed(e.w, c.afterWait(j, r))
				case j.fallback:
					c.awaitHandoff(j, r)
				default:
					c.publishResult(j.id, j.ref, wire.StatusQueued, "")
				}
			}
			return
		}
		// Not stored after all: no answer but the close (below). The
		// subscribers may have it; the publisher falls back, and a
		// duplicate is what a failed commit may cost, never a loss.
		s.waiters.remove(e.w)
	}
	if r.Err != nil {
		if errors.Is(r.Err, ErrOverQuota) {
			c.publishRejected(j.level2, j.ref, j.id, rejectOverQuota, wire.ReasonOverQuota+
				"the recipient's subscription key holds its limit of undelivered messages; send it another way")
			return
		}
		if errors.Is(r.Err, ErrRecipientMismatch) {
			c.publishRejected(j.level2, j.ref, j.id, rejectInvalid, wire.ReasonInvalid+
				"a message with this ID (the same ciphertext) is stored for another recipient; a ciphertext has one recipient")
			return
		}
		// No result: the close tells the client that nothing after its
		// last result is confirmed.
		c.storeFailed("put", r.Err)
		return
	}
	m := r.Message
	if len(m.Ciphertext) == 0 {
		m.Ciphertext = j.msg.Ciphertext
	}
	if m.ID == "" {
		m.ID, m.Key, m.Recipient = j.msg.ID, j.msg.Key, j.msg.Recipient
	}
	if r.Existing {
		s.metrics.republished.Inc()
	} else {
		s.metrics.stored.Inc()
	}
	c.wakeBridge(j, r)
	if j.level2 && r.Existing && r.RecipientAcked {
		c.publishResult(j.id, j.ref, wire.StatusDelivered, "")
		return
	}
	var w *waiter
	if j.level2 && (r.RecipientOnline || s.hub.peerConnected(m.Recipient)) {
		// Registered before the push, so the recipient's ack cannot come first.
		w = s.waiters.add(c, j.id, j.ref, s.cfg.Limits.DeliveryWait, true, c.afterWait(j, r))
	}
	if !(r.Existing && r.RecipientAcked) {
		s.hub.push(m, r.Existing)
	}
	if j.level2 && w == nil {
		if j.fallback {
			c.awaitHandoff(j, r)
		} else {
			c.publishResult(j.id, j.ref, wire.StatusQueued, "")
		}
	}
}

// wakeBridge tells the bridge of a hand-off the put added.
func (c *conn) wakeBridge(j job, r PutResult) {
	if j.handoff && r.Handoff == HandoffPending {
		c.srv.bridge.wake()
	}
}

func (c *conn) finishAck(j job, r AckResult) {
	if r.Err != nil {
		c.storeFailed("ack", r.Err)
		return
	}
	if r.Found {
		c.srv.metrics.acked.Inc()
	}
	if r.ByRecipient {
		c.srv.waiters.resolve(j.id)
	}
}

// deliver queues a committed message for this connection, pushed by the
// hub. While the replay runs, pushes are dropped but remembered (missed),
// and the replay reads the store again; once live, a message the replay
// sent already (Seq ≤ replayedTo) is skipped, unless force (a republish,
// which the recipient is to get again).
func (c *conn) deliver(seq int64, id string, frame func() []byte, force bool) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !c.live {
		c.missed = true
		return
	}
	if seq <= c.replayedTo && !force {
		return
	}
	c.pushLive(id, frame())
}

// deliverEarly queues a message pushed before its commit (the hub holds
// its lock). A connection still replaying gets it when it goes live
// (hub.goLive), as the replay cannot read it yet. The commit may also have
// finished before the push (the store announces while it commits) and a
// replay read it: Seq ≤ replayedTo is skipped.
func (c *conn) deliverEarly(seq int64, id string, frame func() []byte) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.live && seq > c.replayedTo {
		c.pushLive(id, frame())
	}
}

// committed notes that a message pushed before its commit has committed
// (or failed to): a replay that has not gone live yet must read the store
// again, as the message is no longer in the hub's inflight list.
func (c *conn) committed() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !c.live {
		c.missed = true
	}
}

// pushLive queues a live delivery of message id; c.dmu is held. A live
// subscriber whose queue is full is disconnected; its messages stay stored
// for the next replay.
func (c *conn) pushLive(id string, b []byte) {
	c.sent.add(id)
	if err := c.q.push(outFrame{b: b, kind: frameLive}); errors.Is(err, errQueueFull) {
		c.closeWith(closeSlow, "too slow: send queue full; reconnect to get the rest", false, "slow_consumer")
	}
}

// replay sends what is stored for the subscriber, oldest first, page by
// page (see replayLimit), then switches the connection to live pushes (see
// deliver). It fills the send queue only to its low-water mark
// (pushReplay).
func (c *conn) replay() {
	defer c.wg.Done()
	var after int64
	count := 0
	lim := c.srv.cfg.Limits
	limit := replayLimit(lim.MaxMessageBytes)
	// What one anonymous subscribe may make the relay read and send.
	maxCount, maxBytes := lim.AnonymousReplayMessages, lim.AnonymousReplayBytes
	if c.sub.Peer || maxCount <= 0 {
		maxCount = math.MaxInt
	}
	if c.sub.Peer || maxBytes <= 0 {
		maxBytes = math.MaxInt64
	}
	var sentBytes int64
	capped := false
	for !capped {
		msgs, err := c.srv.store.Pending(c.ctx, c.sub, c.key, after, min(limit, maxCount-count))
		if err != nil {
			if c.ctx.Err() == nil {
				c.storeFailed("pending", err)
			}
			return
		}
		for i, m := range msgs {
			if count > 0 && sentBytes+int64(len(m.Ciphertext)) > maxBytes {
				capped = true
				break
			}
			sentBytes += int64(len(m.Ciphertext))
			c.sent.add(m.ID)
			err := c.q.pushReplay(c.ctx, deliveryFrameBytes(len(m.ID), len(m.Ciphertext)), func() outFrame {
				frame := wire.DeliveryFrame(m.ID, m.Ciphertext)
				msgs[i] = Message{} // the frame is all we keep
				return outFrame{b: frame, kind: frameReplay}
			})
			if err != nil {
				return
			}
			after = m.Seq
			count++
		}
		if count >= maxCount {
			capped = true
		}
		if capped {
			// The anonymous replay's bound: live from here; what was
			// not sent comes with a later subscribe.
			c.srv.hub.goLive(c, after, true)
			c.log.Debug("anonymous replay capped", "count", count, "bytes", sentBytes)
			break
		}
		if len(msgs) < limit && c.srv.hub.goLive(c, after, false) {
			break
		}
	}
	c.srv.metrics.replaysDone.Inc()
	c.log.Debug("replayed", "count", count)
	if c.level2 {
		_ = c.q.pushWait(c.ctx, outFrame{b: wire.DrainedFrame(count)})
	}
}

// writeLoop is the connection's only writer: queued frames, pings, and the
// close.
func (c *conn) writeLoop() {
	defer c.wg.Done()
	s := c.srv
	ping := time.NewTicker(s.cfg.Keepalive.PingInterval)
	defer ping.Stop()
	var buf []outFrame
	for {
		select {
		case <-c.q.notify:
		case <-ping.C:
			ctx, cancel := context.WithTimeout(c.ctx, s.cfg.Keepalive.PingTimeout)
			err := c.ws.Ping(ctx)
			cancel()
			if err != nil {
				if c.ctx.Err() == nil {
					s.metrics.disconnects.WithLabelValues("ping_timeout").Inc()
					c.log.Debug("no pong: dropping peer", "err", err)
				}
				c.abort()
				return
			}
			continue
		case <-c.ctx.Done():
			c.abort()
			return
		}
		frames, cr := c.q.take(buf[:0])
		for i, f := range frames {
			ctx, cancel := context.WithTimeout(c.ctx, s.cfg.Limits.WriteTimeout)
			err := c.ws.Write(ctx, websocket.MessageText, f.b)
			timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded)
			cancel()
			if err != nil {
				switch {
				case timedOut: // the reader may have seen the close first
					s.metrics.disconnects.WithLabelValues("write_timeout").Inc()
					c.log.Debug("write timed out: dropping peer", "timeout", s.cfg.Limits.WriteTimeout)
				case c.ctx.Err() == nil && !errors.Is(err, io.EOF):
					s.metrics.disconnects.WithLabelValues("write_failed").Inc()
					c.log.Debug("write failed: dropping peer", "err", err)
				}
				c.abort()
				return
			}
			switch f.kind {
			case frameLive:
				s.metrics.deliveredLive.Inc()
			case frameReplay:
				s.metrics.deliveredReplay.Inc()
			}
			frames[i] = outFrame{}
		}
		buf = frames[:0]
		if cap(buf) > 64 {
			buf = nil
		}
		if cr != nil {
			// Close waits for the client's close frame, which the reader
			// reads; a client that does not answer is dropped after a grace.
			grace := time.AfterFunc(min(closeGrace, s.cfg.Limits.WriteTimeout), c.cancel)
			_ = c.ws.Close(cr.code, cr.reason)
			grace.Stop()
			c.cancel()
			return
		}
	}
}

// abort drops the connection without a close handshake.
func (c *conn) abort() {
	c.q.requestClose(closeRequest{code: websocket.StatusAbnormalClosure})
	_ = c.ws.CloseNow()
	c.cancel()
}

// deliveryFrameBytes is the size of wire.DeliveryFrame's result.
func deliveryFrameBytes(idLen, ciphertextLen int) int {
	return len(`{"id":"","encryptedMessage":""}`) + idLen + base64.StdEncoding.EncodedLen(ciphertextLen)
}

// sentIDs remembers the last messages sent on a connection that it has
// not acked, by the first 8 bytes of their IDs: an ack of one of them is
// not rate-limited (see handleAck). It remembers the last four send
// queues' worth (4 x limits.send_queue, at least 4096: frames queued, in
// the sockets' buffers and in the client's hands before its ack comes
// back); older ones are forgotten in order. Safe for concurrent use; it
// holds nothing until the first send, and at most about 200 KiB.
type sentIDs struct {
	mu   sync.Mutex
	max  int
	ring []uint64 // in send order; ring[next] is the oldest once full
	next int
	set  map[uint64]int // how many times in ring and not acked
}

func sentKey(id string) (uint64, bool) {
	if len(id) < 16 {
		return 0, false
	}
	k, err := strconv.ParseUint(id[:16], 16, 64)
	return k, err == nil
}

func (s *sentIDs) add(id string) {
	k, ok := sentKey(id)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.set == nil {
		s.set = make(map[uint64]int)
	}
	if len(s.ring) < s.max {
		s.ring = append(s.ring, k)
	} else {
		old := s.ring[s.next]
		if n := s.set[old]; n > 1 {
			s.set[old] = n - 1
		} else {
			delete(s.set, old)
		}
		s.ring[s.next] = k
		s.next = (s.next + 1) % s.max
	}
	s.set[k]++
}

// take reports whether id was sent and not acked yet, and forgets it.
func (s *sentIDs) take(id string) bool {
	k, ok := sentKey(id)
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.set[k]
	if n == 0 {
		return false
	}
	// Its ring slot stays; evicting it later finds no count to drop.
	if n > 1 {
		s.set[k] = n - 1
	} else {
		delete(s.set, k)
	}
	return true
}
