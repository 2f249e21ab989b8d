package upstream

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"

	"courier/wire"
)

// session is one authenticated, subscribed connection. Its reader, its
// inbound handler and its pinger live in serve's errgroup: when one fails
// the others stop, and serve returns only after all three have.
type session struct {
	c       *Client
	conn    *websocket.Conn
	inbound chan Inbound

	writeMu sync.Mutex // held across ref assignment and write: publish order is call order

	maxMessageBytes int  // the relay's limit, 0 if unknown; set before the session is shared
	level1          bool // an anonymous level-1 session: no refs, no PublishResults; set before the session is shared

	// held counts the ciphertext bytes read and not yet acked (in
	// inbound or in Handle's batch), bounded by cfg.MaxInboundBytes; the
	// reader waits on freed when over it.
	heldMu sync.Mutex
	held   int64
	freed  chan struct{}

	// Warnings about what the relay sends, at most one a second each (a
	// relay can send thousands of frames a second); only the reader
	// touches them.
	malformed, relayErrs logLimiter

	mu      sync.Mutex
	closed  bool
	nextRef uint64
	pending map[string]chan Result
}

func newSession(c *Client, conn *websocket.Conn) *session {
	return &session{
		c:       c,
		conn:    conn,
		inbound: make(chan Inbound, 4*c.cfg.MaxInboundBatch),
		freed:   make(chan struct{}, 1),
		pending: make(map[string]chan Result),
	}
}

// serve runs the session until the connection fails or parent is done. On
// shutdown it closes the connection with a proper close handshake first, so
// the relay sees a clean goodbye, and the reader ends on that.
func (s *session) serve(parent context.Context) error {
	g, ctx := errgroup.WithContext(context.WithoutCancel(parent))
	g.Go(func() error { return s.read(ctx) })
	g.Go(func() error { return s.handleInbound(ctx) })
	g.Go(func() error { return s.keepalive(ctx) })
	g.Go(func() error {
		select {
		case <-parent.Done():
			s.conn.Close(websocket.StatusNormalClosure, "sidecar shutting down")
			return parent.Err()
		case <-ctx.Done():
			return nil
		}
	})
	return g.Wait()
}

func (s *session) publish(ctx context.Context, recipient string, ciphertext []byte) (<-chan Result, error) {
	if s.maxMessageBytes > 0 && len(ciphertext) > s.maxMessageBytes {
		return nil, fmt.Errorf("%w: the message is %d bytes, the relay accepts at most %d", ErrTooLarge, len(ciphertext), s.maxMessageBytes)
	}
	ch := make(chan Result, 1)
	if s.level1 {
		return s.publishLevel1(ctx, recipient, ciphertext, ch)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrNotConnected
	}
	s.nextRef++
	ref := strconv.FormatUint(s.nextRef, 10)
	s.pending[ref] = ch
	s.mu.Unlock()

	frame := wire.ClientFrameBytes(wire.TypePublish, wire.Publish{
		EncryptedMessage: base64.StdEncoding.EncodeToString(ciphertext),
		Recipient:        recipient,
		Ref:              ref,
	})
	if err := s.c.write(ctx, s.conn, frame); err != nil {
		s.mu.Lock()
		delete(s.pending, ref)
		s.mu.Unlock()
		// A failed or cut-short write leaves the connection unusable
		// (coder/websocket closes it): the caller retries after the reconnect.
		return nil, fmt.Errorf("%w: write publish: %w", ErrNotConnected, err)
	}
	return ch, nil
}

// publishLevel1 writes a level-1 publish: no ref, and no PublishResult
// will come, so the answer (Unconfirmed) is on ch as soon as the frame is
// written. A relay's {"error": …} to it names no message; the reader
// passes it to OnRelayError.
func (s *session) publishLevel1(ctx context.Context, recipient string, ciphertext []byte, ch chan Result) (<-chan Result, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, ErrNotConnected
	}
	frame := wire.ClientFrameBytes(wire.TypePublish, wire.Publish{
		EncryptedMessage: base64.StdEncoding.EncodeToString(ciphertext),
		Recipient:        recipient,
	})
	if err := s.c.write(ctx, s.conn, frame); err != nil {
		return nil, fmt.Errorf("%w: write publish: %w", ErrNotConnected, err)
	}
	ch <- Result{Unconfirmed: true}
	return ch, nil
}

// failPending answers every publish still waiting with ErrConnectionLost.
func (s *session) failPending() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for ref, ch := range s.pending {
		ch <- Result{Err: ErrConnectionLost}
		delete(s.pending, ref)
	}
}

func (s *session) resolve(r wire.PublishResult) {
	s.mu.Lock()
	ch, ok := s.pending[r.Ref]
	delete(s.pending, r.Ref)
	s.mu.Unlock()
	if !ok {
		s.c.cfg.Logger.Debug("publish result for an unknown ref", "ref", r.Ref, "id", r.ID)
		return
	}
	ch <- Result{PublishResult: r}
}

func (s *session) read(ctx context.Context) error {
	log := s.c.cfg.Logger
	for {
		f, err := readFrame(ctx, s.conn)
		if err != nil {
			if websocket.CloseStatus(err) != -1 {
				return err // a close from the relay: keep its code for Run
			}
			return fmt.Errorf("read: %w", err)
		}
		switch f.Kind {
		case wire.KindPublishResult:
			r := *f.PublishResult
			r.Status, r.Reason = clip(r.Status), clip(r.Reason) // kept as a message's last error
			s.resolve(r)
		case wire.KindDelivery:
			ct, err := base64.StdEncoding.DecodeString(f.Delivery.EncryptedMessage)
			if err != nil || wire.MessageID(ct) != f.Delivery.ID {
				// Not acked: a relay that sends this is broken, and the
				// message stays with it rather than being lost here.
				s.malformed.note(log, "relay delivered a malformed message (its ID is not the hash of its ciphertext); not acking it", "id", clip(f.Delivery.ID))
				continue
			}
			if err := s.hold(ctx, int64(len(ct))); err != nil {
				return err
			}
			select {
			case s.inbound <- Inbound{ID: f.Delivery.ID, Ciphertext: ct}:
			case <-ctx.Done():
				return ctx.Err()
			}
		case wire.KindDrained:
			log.Debug("relay replay drained", "count", f.Drained.Count)
		case wire.KindError, wire.KindLevel2Error:
			reason := clip(f.Error)
			s.relayErrs.note(log, "relay reported an error", "reason", reason)
			if s.c.cfg.OnRelayError != nil {
				s.c.cfg.OnRelayError(reason)
			}
		default:
			log.Debug("ignoring unexpected relay frame", "kind", f.Kind)
		}
	}
}

// hold waits until n more bytes fit in cfg.MaxInboundBytes (or nothing
// is held), then counts them as held.
func (s *session) hold(ctx context.Context, n int64) error {
	for {
		s.heldMu.Lock()
		if s.held == 0 || s.held+n <= s.c.cfg.MaxInboundBytes {
			s.held += n
			s.heldMu.Unlock()
			return nil
		}
		s.heldMu.Unlock()
		select {
		case <-s.freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release gives back n held bytes and wakes the reader if it waits.
func (s *session) release(n int64) {
	s.heldMu.Lock()
	s.held -= n
	s.heldMu.Unlock()
	select {
	case s.freed <- struct{}{}:
	default:
	}
}

// handleInbound hands inbound messages to the Handler in batches, in order,
// and acks each only after the handler returned nil.
func (s *session) handleInbound(ctx context.Context) error {
	max := s.c.cfg.MaxInboundBatch
	batch := make([]Inbound, 0, max)
	for {
		clear(batch) // the last batch's ciphertexts are released: not kept alive here
		batch = batch[:0]
		select {
		case m := <-s.inbound:
			batch = append(batch, m)
		case <-ctx.Done():
			return ctx.Err()
		}
	drain:
		for len(batch) < max {
			select {
			case m := <-s.inbound:
				batch = append(batch, m)
			default:
				break drain
			}
		}
		if err := s.c.cfg.Handle(ctx, batch); err != nil {
			return fmt.Errorf("inbound handler: %w", err)
		}
		var size int64
		for _, m := range batch {
			ack := wire.ClientFrameBytes(wire.TypeAck, wire.Ack{MessageID: m.ID})
			if err := s.c.write(ctx, s.conn, ack); err != nil {
				return fmt.Errorf("write ack: %w", err)
			}
			size += int64(len(m.Ciphertext))
		}
		s.release(size)
	}
}

func (s *session) keepalive(ctx context.Context) error {
	t := time.NewTicker(s.c.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, s.c.cfg.PingTimeout)
		err := s.conn.Ping(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("keepalive: no pong within %s: %w", s.c.cfg.PingTimeout, err)
		}
	}
}

// logLimiter logs a warning at most once a second, saying how many like
// it were left out since the last one. One goroutine uses it.
type logLimiter struct {
	last    time.Time
	dropped int
}

func (l *logLimiter) note(log *slog.Logger, msg string, args ...any) {
	now := time.Now()
	if now.Sub(l.last) < time.Second {
		l.dropped++
		return
	}
	if l.dropped > 0 {
		args = append(args, "left_out_since_last", l.dropped)
	}
	l.last, l.dropped = now, 0
	log.Warn(msg, args...)
}
