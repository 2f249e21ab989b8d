package sidecar

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"courier/upstream"
	"courier/wire"
)

// Relay connection states, as /v1/status reports them: upstream's three,
// and disabled when no relay_url is configured.
const (
	RelayDisabled     = "disabled"
	RelayConnecting   = string(upstream.StateConnecting)
	RelayConnected    = string(upstream.StateConnected)
	RelayDisconnected = string(upstream.StateDisconnected)
)

// RelayStatus is the state of the relay connection.
type RelayStatus struct {
	State     string    `json:"state"`
	Since     time.Time `json:"since"`
	LastError string    `json:"last_error,omitempty"`
	PeerID    string    `json:"peer_id,omitempty"`
	// Proxy is relay_proxy without user or password ("socks5h://host:port")
	// when the connection goes through one.
	Proxy string `json:"proxy,omitempty"`
	// Identity is relay_identity in force: "peer" (authenticated as
	// PeerID) or "anonymous" (level 1 by subscription key; PeerID empty).
	Identity string `json:"identity"`
}

// relayLink is the engine's part that owns the relay connection: the
// upstream client, its status and the times the delivery rules read (when
// it went down, when it came back). It has its own lock; manageRelay is
// the one goroutine that starts and stops clients.
//
// Each configured relay_url is a generation: Reconfigure starts a new one
// (status connecting, or disabled, at once), and a client's reports count
// only under the generation it was started for.
type relayLink struct {
	mu     sync.Mutex
	gen    uint64
	up     *upstream.Client // nil unless a client runs for the current generation
	status RelayStatus
	downAt time.Time // when the configured relay was last seen not connected
	backAt time.Time // when the connection came back after it had been lost; zero before
	wasUp  bool      // the current generation's client has been connected before
	ident  string    // the current generation's relay_identity, for the status
}

// configure starts a new generation for cfg's relay_url and
// relay_identity, as of now, and returns the status it begins with.
func (l *relayLink) configure(cfg Config, now time.Time) RelayStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	l.ident = IdentityPeer
	if cfg.Anonymous() {
		l.ident = IdentityAnonymous
	}
	if cfg.RelayURL == "" {
		l.status = RelayStatus{State: RelayDisabled, Since: now, Identity: l.ident}
	} else {
		l.status = RelayStatus{State: RelayConnecting, Since: now, Identity: l.ident}
		l.downAt = now
	}
	l.backAt, l.wasUp = time.Time{}, false // a new relay: its first connection is no comeback
	return l.status
}

func (l *relayLink) generation() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gen
}

// setClient records the client running for generation gen (nil: none).
func (l *relayLink) setClient(gen uint64, c *upstream.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c == nil || gen == l.gen {
		l.up = c
	}
}

// report takes a status report of generation gen's client. It returns
// false for a replaced or stopped client's last words, and whether the
// connection was up before the report.
func (l *relayLink) report(gen uint64, s upstream.Status, now time.Time) (taken, wasConnected bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if gen != l.gen || l.up == nil {
		return false, false
	}
	wasConnected = l.status.State == RelayConnected
	l.status = RelayStatus{State: string(s.State), Since: s.Since, LastError: s.LastError, PeerID: s.PeerID, Identity: l.ident}
	if wasConnected && s.State != upstream.StateConnected {
		l.downAt = now
	}
	if !wasConnected && s.State == upstream.StateConnected {
		// A first connection is not a comeback: only a connection that
		// comes back after this client had one opens the window in which
		// a queued answer is retried INDIRECT.
		if l.wasUp {
			l.backAt = now
		}
		l.wasUp = true
	}
	return true, wasConnected
}

// snapshot returns the connection's status.
func (l *relayLink) snapshot() RelayStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.status
}

// comeback returns when the connection came back from an outage (zero if
// it has not). Within relay_grace of that, a queued answer may only mean
// that the recipient's sidecar has not reconnected yet (see decide).
func (l *relayLink) comeback() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.backAt
}

// route says where queued messages go now, under cfg.
func (l *relayLink) route(cfg Config, now time.Time) (route, *upstream.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case cfg.RelayURL == "":
		return routeOffline, nil
	case l.up != nil && l.status.State == RelayConnected:
		return routeIndirect, l.up
	case now.Sub(l.downAt) < cfg.Delivery.RelayGrace:
		// Down, or just configured (downAt is then the configuration's
		// time) and the client starting or unable to start: wait out
		// the grace, then OFFLINE.
		return routeWait, nil
	default:
		return routeOffline, nil
	}
}

// downErr says why the relay keeps the sidecar from doing its job (down
// past the grace), or nil.
func (l *relayLink) downErr(cfg Config, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cfg.RelayURL == "" || l.status.State == RelayConnected {
		return nil
	}
	if down := now.Sub(l.downAt); down >= cfg.Delivery.RelayGrace {
		return fmt.Errorf("relay: %s for %s (last error: %s)", l.status.State, down.Round(time.Second), l.status.LastError)
	}
	return nil
}

// route says where queued messages go now.
type route int

const (
	routeIndirect route = iota // relay connected
	routeWait                  // relay down, within the grace: keep them queued
	routeOffline               // no relay configured, or down past the grace
)

// manageRelay owns the upstream client: it starts one for the configured
// relay_url, and stops and replaces it when a reload changes the URL (or
// relay_host), that is when relayLink's generation changes.
func (e *Engine) manageRelay(ctx context.Context) error {
	var (
		running bool
		gen     uint64
		stop    context.CancelFunc
		done    chan struct{}
	)
	halt := func() {
		if stop == nil {
			return
		}
		e.link.setClient(gen, nil) // no new publishes; those in flight fail with ErrConnectionLost
		stop()
		<-done
		stop, done = nil, nil
	}
	apply := func() {
		cfg, g := e.Config(), e.link.generation()
		if running && g == gen {
			return
		}
		halt()
		running, gen = true, g
		if cfg.RelayURL == "" {
			e.log.Info("relay disabled: every message goes OFFLINE")
			signal(e.wakeDispatch)
			return
		}
		var roots *x509.CertPool
		if cfg.RelayCAFile != "" {
			var err error
			if roots, err = LoadRelayCA(cfg.RelayCAFile); err != nil {
				// Validate read it; it has gone since. Connecting with the
				// system roots instead would trust what the operator chose
				// not to: say so in the status and wait for a reload.
				e.log.Error("relay_ca_file", "err", err)
				e.onRelayStartError(g, fmt.Errorf("relay_ca_file: %w", err))
				return
			}
		}
		var userID string
		if cfg.Anonymous() {
			var err error
			if userID, err = e.anonymousUserID(ctx); err != nil {
				// Without it the relay would replay every unacked message
				// under the key at each connection: wait for the store.
				e.log.Error("anonymous userID", "err", err)
				e.onRelayStartError(g, err)
				running = false // tried again at the next wake
				time.AfterFunc(time.Second, func() { signal(e.reconfigured) })
				return
			}
		}
		var proxy *url.URL
		if cfg.RelayProxy != "" {
			var err error
			if proxy, err = ParseRelayProxy(cfg.RelayProxy); err != nil { // Validate checked it
				e.log.Error("relay_proxy", "err", err)
				return
			}
		}
		client, err := upstream.New(upstream.Config{
			URL:          cfg.RelayURL,
			ExpectedHost: cfg.RelayHost,
			RootCAs:      roots,
			Proxy:        proxy,
			Sign:         e.sign,
			Handle: func(ctx context.Context, batch []upstream.Inbound) error {
				return e.takeInbound(ctx, batch, cfg.Anonymous())
			},
			Anonymous:     cfg.Anonymous(),
			UserID:        userID,
			OnRelayError:  e.onRelayError,
			Logger:        e.log.With("component", "upstream"),
			OnStateChange: func(s upstream.Status) { e.onRelayState(g, s) },
			BackoffMax:    e.opts.ReconnectWaitMax, // 0: upstream's default
		})
		if err != nil { // Validate checked the URL; this is a bug, not an input error.
			e.log.Error("cannot start relay client", "err", err)
			return
		}
		e.link.setClient(g, client)
		var cctx context.Context
		cctx, stop = context.WithCancel(ctx)
		done = make(chan struct{})
		go func() {
			defer close(done)
			_ = client.Run(cctx) // returns nil when cctx is done
		}()
		e.armGraceTimer()
	}
	apply()
	for {
		select {
		case <-ctx.Done():
			halt()
			return ctx.Err()
		case <-e.reconfigured:
			apply()
		}
	}
}

// anonymousUserIDKey is where the store keeps the anonymous userID.
const anonymousUserIDKey = "anonymous_user_id"

// anonymousUserID returns the userID of the anonymous (level-1)
// subscription: 16 random bytes in hex, made the first time and kept in
// the store, so that the relay's acks for it hold across reconnects and
// restarts. It is not derived from the peer ID and says nothing of it.
//
// A stored value that is not such a string (an empty or hand-edited row,
// a peer ID, which would name the node) is replaced by a new one and
// logged: upstream refuses it, and the link would otherwise stay
// "connecting" for good, with every message waiting. The new userID has
// acked nothing, so the relay replays what is stored under the key (at
// most its anonymous replay bound); the inbox drops the IDs it has.
func (e *Engine) anonymousUserID(ctx context.Context) (string, error) {
	id, err := e.q.MetaOrInit(ctx, anonymousUserIDKey, newUserID())
	if err != nil {
		return "", fmt.Errorf("anonymous userID: %w", err)
	}
	if validUserID(id) {
		return id, nil
	}
	id = newUserID()
	if err := e.q.SetMeta(ctx, anonymousUserIDKey, id); err != nil {
		return "", fmt.Errorf("anonymous userID: replace a damaged one: %w", err)
	}
	e.log.Warn("the stored anonymous userID was damaged; made a new one (the relay replays what is stored under the key)")
	return id, nil
}

// newUserID returns 16 random bytes in lowercase hex.
func newUserID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// validUserID reports whether id is what newUserID makes: 32 lowercase
// hex digits (never a peer ID, always accepted by a relay).
func validUserID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// onRelayError counts an {"error": …} the relay sent outside the
// handshake. At level 1 it answers a refused publish (too_large,
// rate_limited, …) that way, naming no message: the message went OFFLINE
// too, so nothing is lost, but an operator should see it.
func (e *Engine) onRelayError(reason string) {
	e.m.relayErrors.WithLabelValues(relayErrorKind(reason)).Inc()
}

// relayErrorKind is the metric label for a relay's error reason: its
// protocol prefix (too_large, rate_limited, invalid, over_quota) or other.
func relayErrorKind(reason string) string {
	for _, k := range []string{wire.ReasonTooLarge, wire.ReasonRateLimited, wire.ReasonInvalid, wire.ReasonOverQuota} {
		if strings.HasPrefix(reason, strings.TrimSpace(k)) {
			return strings.TrimSuffix(strings.TrimSpace(k), ":")
		}
	}
	return "other"
}

func (e *Engine) sign(ctx context.Context, content string) (upstream.Signature, error) {
	cfg := e.Config().Node
	sig, err := e.node.sign(ctx, cfg, content)
	e.health.record("sign", err)
	return sig, err
}

// onRelayState takes a status report of the client of generation gen.
func (e *Engine) onRelayState(gen uint64, s upstream.Status) {
	taken, wasConnected := e.link.report(gen, s, time.Now())
	if !taken {
		return
	}
	e.m.relayState(string(s.State))
	if s.State == upstream.StateConnected {
		signal(e.wakeDispatch)
	} else if wasConnected {
		e.armGraceTimer()
	}
}

// armGraceTimer wakes the dispatcher when the grace for a relay outage runs
// out, so that waiting messages go OFFLINE on time.
func (e *Engine) armGraceTimer() {
	time.AfterFunc(e.Config().Delivery.RelayGrace+10*time.Millisecond, func() { signal(e.wakeDispatch) })
}

// RelayStatus returns the relay connection's status.
func (e *Engine) RelayStatus() RelayStatus {
	st := e.link.snapshot()
	if cfg := e.Config(); cfg.RelayURL != "" && cfg.RelayProxy != "" {
		if u, err := ParseRelayProxy(cfg.RelayProxy); err == nil {
			st.Proxy = RedactProxy(u)
		}
	}
	return st
}

// onRelayStartError records that generation gen's client could not start
// (relay_ca_file could not be read, the anonymous userID not stored).
func (e *Engine) onRelayStartError(gen uint64, err error) {
	e.link.mu.Lock()
	if gen == e.link.gen {
		e.link.status = RelayStatus{State: RelayDisconnected, Since: time.Now(), LastError: err.Error(), Identity: e.link.ident}
	}
	e.link.mu.Unlock()
	e.m.relayState(RelayDisconnected)
	// No client runs to report a state: wake the dispatcher when the
	// grace has passed, or queued messages would wait for a reload.
	e.armGraceTimer()
}
