package relay

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"courier/internal/nodeauth"
)

// Outcomes of hand-offs, as the courier_relay_handoffs_total "outcome"
// label spells them.
const (
	handoffHandedOff     = "handed_off"     // the node answered 2xx
	handoffFailedAttempt = "failed_attempt" // one attempt failed; it is retried
	handoffDroppedAcked  = "dropped_acked"  // the recipient acked first
	handoffExpired       = "expired"        // the message expired before a hand-off succeeded
)

// bridge is the OFFLINE bridge (PROTOCOL.md, "The relay's OFFLINE
// bridge"): it hands the pending hand-offs of its store to the operator's
// node, retrying with capped exponential backoff and full jitter until the
// node takes one (2xx) or its message expires. The store holds the pending
// hand-offs durably; the bridge claims those due with a lease, so that of
// several instances on one store exactly one works on each.
//
// Its goroutines: run (claims and schedules), and one per attempt, at most
// Concurrency at a time; Server.Shutdown waits for all of them.
type bridge struct {
	s      *Server
	cfg    OfflineConfig
	store  HandoffStore
	log    *slog.Logger
	client *http.Client
	creds  *nodeauth.Creds
	owner  string        // this instance's claims
	lease  time.Duration // how long a claim keeps others off
	ttl    time.Duration // limits.message_ttl
	slots  chan struct{} // one per attempt running
	wakeCh chan struct{}
	wg     sync.WaitGroup

	failures atomic.Int64 // attempts failed in a row
	lastErr  atomic.Pointer[string]
}

func newBridge(s *Server, store HandoffStore) (*bridge, error) {
	cfg := *s.cfg.Offline
	creds := nodeauth.New("offline", nodeauth.Files{Username: cfg.Username, PasswordFile: cfg.PasswordFile, CookieFile: cfg.CookieFile})
	if err := creds.Check(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var id [8]byte
	_, _ = crand.Read(id[:])
	host, _ := os.Hostname()
	return &bridge{
		s:     s,
		cfg:   cfg,
		store: store,
		log:   s.log.With("component", "offline_bridge"),
		client: &http.Client{
			Timeout: cfg.Timeout,
			// A redirect could carry the credentials elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		creds:  creds,
		owner:  host + "/" + hex.EncodeToString(id[:]),
		lease:  2*cfg.Timeout + 5*time.Second,
		ttl:    s.cfg.Limits.MessageTTL,
		slots:  make(chan struct{}, cfg.Concurrency),
		wakeCh: make(chan struct{}, 1),
	}, nil
}

// start runs the bridge until ctx ends; stop waits for it.
func (b *bridge) start(ctx context.Context) {
	b.wg.Add(1)
	go b.run(ctx)
}

func (b *bridge) wait() { b.wg.Wait() }

// wake makes the bridge look at what is due again (a hand-off was added,
// or an attempt finished).
func (b *bridge) wake() {
	select {
	case b.wakeCh <- struct{}{}:
	default:
	}
}

func (b *bridge) run(ctx context.Context) {
	defer b.wg.Done()
	b.log.Info("OFFLINE bridge on", "after", b.s.cfg.offlineAfter(), "owner", b.owner)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-b.wakeCh:
		}
		sleep := b.step(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(sleep)
	}
}

// step claims what is due for the free slots, starts an attempt for each,
// and returns how long to sleep before looking again (unless woken).
func (b *bridge) step(ctx context.Context) time.Duration {
	poll := b.cfg.PollInterval
	free := cap(b.slots) - len(b.slots)
	if free == 0 {
		return poll // an attempt that ends wakes the loop
	}
	hs, err := b.store.ClaimHandoffs(ctx, b.owner, time.Now(), b.lease, free)
	if err != nil {
		if ctx.Err() == nil {
			b.log.Error("claiming hand-offs failed", "err", err)
		}
		return poll
	}
	for _, h := range hs {
		b.slots <- struct{}{}
		b.wg.Add(1)
		go b.attempt(ctx, h)
	}
	if len(hs) == free {
		return 0 // there may be more due
	}
	next, ok, err := b.store.NextHandoff(ctx)
	if err != nil || !ok {
		return poll
	}
	return min(poll, max(time.Until(next), time.Millisecond))
}

// attempt makes one attempt at a claimed hand-off and records its outcome.
func (b *bridge) attempt(ctx context.Context, h Handoff) {
	defer b.wg.Done()
	defer func() {
		<-b.slots
		b.wake()
	}()
	m := h.Message
	// The outcome is recorded even when the server is stopping: a claim
	// left behind would wait out its lease.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if h.Acked {
		if err := b.store.DropHandoff(rctx, m.ID); err != nil {
			b.log.Error("dropping an acked hand-off failed", "id", m.ID, "err", err)
			return
		}
		b.s.metrics.handoffs.WithLabelValues(handoffDroppedAcked).Inc()
		b.log.Debug("hand-off dropped: the recipient acked", "id", m.ID)
		// A fallback publish still waiting (its ack came on another
		// instance, or between its two waits) learns it here.
		b.s.waiters.resolve(m.ID)
		return
	}
	if time.Since(m.StoredAt) >= b.ttl {
		if err := b.store.DropHandoff(rctx, m.ID); err != nil {
			b.log.Error("dropping an expired hand-off failed", "id", m.ID, "err", err)
			return
		}
		b.s.metrics.handoffs.WithLabelValues(handoffExpired).Inc()
		b.log.Warn("hand-off given up: the message expired", "id", m.ID, "attempts", h.Attempts)
		b.s.waiters.handedOff(m.ID, false)
		return
	}
	// An attempt under way is finished even when the server stops (within
	// offline.timeout, which Shutdown waits for): cut short, the node might
	// have taken the message without the relay knowing, and it would be
	// handed off again after the restart.
	err := b.post(context.WithoutCancel(ctx), m)
	if err == nil {
		// Recorded before anyone is answered offline: a republish finds it.
		if ferr := b.store.FinishHandoff(rctx, m.ID); ferr != nil {
			// The lease runs out and it is handed off again: a duplicate,
			// which the node drops by message ID.
			b.log.Error("recording a hand-off failed", "id", m.ID, "err", ferr)
			return
		}
		b.failures.Store(0)
		b.s.metrics.handoffs.WithLabelValues(handoffHandedOff).Inc()
		b.log.Info("handed OFFLINE", "id", m.ID, "attempts", h.Attempts+1)
		b.s.waiters.handedOff(m.ID, true)
		return
	}
	attempts := h.Attempts + 1
	if ctx.Err() != nil {
		// Shutting down: not the node's failure. Due again at once.
		_ = b.store.RetryHandoff(rctx, m.ID, b.owner, time.Now())
		return
	}
	delay := b.backoff(attempts)
	if rerr := b.store.RetryHandoff(rctx, m.ID, b.owner, time.Now().Add(delay)); rerr != nil {
		b.log.Error("recording a failed hand-off failed", "id", m.ID, "err", rerr)
	}
	n := b.failures.Add(1)
	msg := err.Error()
	b.lastErr.Store(&msg)
	b.s.metrics.handoffs.WithLabelValues(handoffFailedAttempt).Inc()
	b.log.Warn("OFFLINE hand-off failed; retrying", "id", m.ID, "attempt", attempts, "retry_in", delay, "failures_in_a_row", n, "err", err)
	b.s.waiters.handedOff(m.ID, false)
}

// backoff is the wait before the next attempt after the n-th failed one:
// capped exponential backoff with full jitter.
func (b *bridge) backoff(n int) time.Duration {
	ceil := b.cfg.RetryMin
	for i := 1; i < n && ceil < b.cfg.RetryMax; i++ {
		ceil *= 2 // no overflow: retry_max is at most maxRetryMax
	}
	return rand.N(min(ceil, b.cfg.RetryMax)) + 1
}

// offlineRequest is the body of a POST to the node's OFFLINE endpoint.
type offlineRequest struct {
	Recipient  string `json:"recipient"`
	Ciphertext string `json:"ciphertext"`
}

// post hands m to the node: nil when it answered 2xx. Errors never quote
// the credentials.
func (b *bridge) post(ctx context.Context, m Message) error {
	b64 := base64.StdEncoding.EncodeToString(m.Ciphertext)
	body, err := json.Marshal(offlineRequest{Recipient: m.Recipient, Ciphertext: b64})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.cfg.PublishURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if err := b.creds.Apply(req); err != nil {
		return err
	}
	resp, err := b.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("the node did not answer within offline.timeout (%v)", b.cfg.Timeout)
		}
		return fmt.Errorf("POST to the node: %w", err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		b.creds.Stale()
	}
	if len(b64) >= 16 && bytes.Contains(snippet, []byte(b64[:16])) {
		// The node quotes the request: no ciphertext in logs.
		return fmt.Errorf("the node answered %s (its body quotes the ciphertext; not logged)", resp.Status)
	}
	return fmt.Errorf("the node answered %s: %s", resp.Status, printable(snippet))
}

// printable is a node's error body, cut short and made safe for a log line.
func printable(b []byte) string {
	s := strings.TrimSpace(string(b))
	if !utf8.ValidString(s) {
		return fmt.Sprintf("(%d bytes, not text)", len(b))
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 {
			return ' '
		}
		return r
	}, s)
	return clipReason(s)
}

// unready returns why /readyz should fail, or "".
func (b *bridge) unready() string {
	n := b.failures.Load()
	if n < int64(b.cfg.UnreadyAfter) {
		return ""
	}
	last := ""
	if p := b.lastErr.Load(); p != nil {
		last = ": " + *p
	}
	return fmt.Sprintf("offline bridge: the operator's node failed the last %d hand-off attempts%s", n, last)
}
