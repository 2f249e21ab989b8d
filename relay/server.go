package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"courier/wire"
)

// Server is the relay: it serves the WebSocket protocol of PROTOCOL.md and
// the HTTP endpoints beside it from one http.Handler. It owns every
// goroutine it starts and waits for them in Shutdown. It does not own the
// store: close the store after the server.
type Server struct {
	cfg     Config
	store   Store
	log     *slog.Logger
	metrics *metrics
	hub     *hub
	waiters *waiters
	bridge  *bridge // the OFFLINE bridge; nil when [offline] is not configured
	bus     Bus     // nil for a store of one instance
	handler http.Handler
	clients *clients       // per-address and per-peer limits
	trusted []netip.Prefix // trusted_proxies
	budget  *byteBudget    // limits.max_inflight_bytes

	ctx    context.Context // ends at Shutdown
	cancel context.CancelFunc

	clock  atomic.Pointer[func() time.Time] // time.Now, replaced by tests
	nconns atomic.Int64                     // open WebSocket connections, for max_connections
	nextID atomic.Uint64
	// draining: /readyz answers 503 (Drain), the server still serves.
	draining atomic.Bool

	mu      sync.Mutex
	conns   map[*conn]struct{}
	closing bool
	wg      sync.WaitGroup // connection handlers and the sweeper

	shutdownOnce sync.Once
}

// New validates cfg and returns a server that uses store. It starts the
// TTL sweep; serve its Handler to accept clients.
func New(cfg Config, store Store, logger *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil {
		return nil, errors.New("relay: nil store")
	}
	trusted, _ := parsePrefixes(cfg.TrustedProxies) // Validate checked it
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{
		cfg:     cfg,
		store:   store,
		log:     logger,
		metrics: newMetrics(),
		hub:     newHub(),
		waiters: newWaiters(),
		conns:   make(map[*conn]struct{}),
		clients: newClients(cfg.Limits),
		trusted: trusted,
		budget:  newByteBudget(cfg.Limits.MaxInflightBytes),
	}
	s.metrics.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "courier_relay", Name: "inflight_bytes",
		Help: "Bytes of publishes waiting for their commit, held from limits.max_inflight_bytes.",
	}, func() float64 { return float64(s.budget.inUse()) }))
	s.ctx, s.cancel = context.WithCancel(context.Background())
	now := time.Now
	s.clock.Store(&now)
	if cfg.Offline != nil {
		hs, ok := store.(HandoffStore)
		if !ok {
			s.cancel()
			return nil, fmt.Errorf("config: offline: the OFFLINE bridge needs a store that keeps hand-offs (relay.HandoffStore); %T does not", store)
		}
		b, err := newBridge(s, hs)
		if err != nil {
			s.cancel()
			return nil, err
		}
		s.bridge = b
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/", s.serveRoot)
	mux.HandleFunc("GET /healthz", s.serveHealthz)
	mux.HandleFunc("GET /readyz", s.serveReadyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	if cfg.Client != nil {
		mux.Handle("GET /client/", http.StripPrefix("/client/", http.FileServerFS(cfg.Client)))
	}
	s.handler = mux

	if b, ok := store.(Bus); ok {
		// Listening before the first connection: every event committed
		// from now on reaches this instance's subscribers.
		if err := b.Listen(s.ctx, busHandler{s}); err != nil {
			s.cancel()
			return nil, fmt.Errorf("relay: listen to the other instances: %w", err)
		}
		s.bus = b
	}

	s.wg.Add(1)
	go s.sweepLoop()
	if s.bridge != nil {
		s.bridge.start(s.ctx)
	}
	return s, nil
}

// busHandler applies the other instances' events to this one.
type busHandler struct{ s *Server }

// Stored pushes a message another instance committed to this instance's
// subscribers, as a commit of its own would be.
func (h busHandler) Stored(m Message, existing bool) { h.s.hub.push(m, existing) }

// RecipientAcked answers delivered to the publishes waiting here for id.
func (h busHandler) RecipientAcked(id string) {
	h.s.waiters.resolveRemote(id, h.s.now(), h.s.cfg.Limits.DeliveryWait)
}

// PeerConnected replaces this instance's older connection of peer.
func (h busHandler) PeerConnected(peer string, gen int64) { h.s.hub.replaceOlder(peer, gen) }

// Resync closes every subscriber with 1012: events may have been lost,
// and a reconnect replays from the store.
func (h busHandler) Resync(reason string) {
	h.s.log.Warn("closing subscribers so that they replay", "reason", reason)
	h.s.hub.each(func(c *conn) {
		c.closeWith(wire.CloseServiceRestart, "relay resync: reconnect", false, "resync")
	})
}

// Handler returns the server's HTTP handler: the WebSocket endpoint at /
// and the HTTP endpoints.
func (s *Server) Handler() http.Handler { return s.handler }

// ServeHTTP serves s.Handler().
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Shutdown stops accepting connections, closes every connection with 1012
// (service restart) and waits for the server's goroutines, including the
// ones that wait for the commits of writes already handed to the store.
// When ctx ends first, the connections are dropped without a close
// handshake and Shutdown returns ctx's error at once; what is left of the
// connections' goroutines ends as soon as the store has answered their
// writes (closing the store answers them all). It is idempotent; it does
// not close the store.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		conns := make([]*conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		s.cancel()
		s.log.Info("shutting down", "connections", len(conns))
		for _, c := range conns {
			c.closeWith(wire.CloseServiceRestart, "server shutting down", false, "shutdown")
		}
	})
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		if s.bridge != nil {
			s.bridge.wait()
		}
		close(done)
	}()
	select {
	case <-done:
		s.waiters.close()
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.cancel()
		}
		s.mu.Unlock()
		s.waiters.close()
		return fmt.Errorf("relay shutdown: %w", ctx.Err())
	}
}

// Drain makes /readyz answer 503 from now on while the server keeps
// serving, so that a front stops sending it new connections before
// Shutdown closes the ones it has (a rolling restart). It is idempotent.
func (s *Server) Drain() {
	if s.draining.CompareAndSwap(false, true) {
		s.log.Info("draining: /readyz now answers 503")
	}
}

// Close is Shutdown without a deadline.
func (s *Server) Close() error { return s.Shutdown(context.Background()) }

func (s *Server) now() time.Time { return (*s.clock.Load())() }

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) sweepLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		s.sweep()
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *Server) sweep() {
	cutoff := s.now().Add(-s.cfg.Limits.MessageTTL)
	n, err := s.store.Sweep(s.ctx, cutoff)
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Error("sweep failed", "err", err)
		}
		return
	}
	s.metrics.expired.Add(float64(n))
	if n > 0 {
		s.log.Info("swept expired messages", "count", n, "cutoff", cutoff)
	}
}

func isUpgrade(r *http.Request) bool {
	for _, v := range r.Header.Values("Upgrade") {
		if strings.Contains(strings.ToLower(v), "websocket") {
			return true
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (s *Server) serveRoot(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %s: the relay serves WebSocket and its description at /, and /healthz, /readyz, /metrics", r.URL.Path))
		return
	}
	if isUpgrade(r) {
		s.serveWebSocket(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "use GET, or a WebSocket upgrade")
		return
	}
	writeJSON(w, http.StatusOK, s.description())
}

// Description is the JSON document GET / returns.
type Description struct {
	Name           string           `json:"name"`
	Version        string           `json:"version"`
	ProtocolLevels []int            `json:"protocol_levels"`
	PublicHost     string           `json:"public_host"`
	Limits         DescribedLimits  `json:"limits"`
	Keepalive      DescribedPinging `json:"keepalive"`
	Offline        DescribedOffline `json:"offline"`
}

// DescribedOffline says whether the OFFLINE bridge is on: whether a
// "fallback":"relay" publish (and every level-1 publish) is handed to the
// operator's node when its recipient does not ack it within After.
type DescribedOffline struct {
	Enabled bool   `json:"enabled"`
	After   string `json:"after,omitempty"`
}

// DescribedLimits are the limits a client can plan for.
type DescribedLimits struct {
	MaxMessageBytes   int     `json:"max_message_bytes"`
	MaxFrameBytes     int64   `json:"max_frame_bytes"`
	MessageTTL        string  `json:"message_ttl"`
	DeliveryWait      string  `json:"delivery_wait"`
	SubscribeTimeout  string  `json:"subscribe_timeout"`
	NonceTTL          string  `json:"nonce_ttl"`
	PublishRate       float64 `json:"publish_rate"`
	PublishBurst      int     `json:"publish_burst"`
	MaxMessagesPerKey int64   `json:"max_messages_per_key"`
	MaxBytesPerKey    int64   `json:"max_bytes_per_key"`
	MaxConnections    int     `json:"max_connections"`
	// The limits of issue 7: per client address and per peer.
	MaxConnectionsPerIP     int     `json:"max_connections_per_ip"`
	AnonymousPublishRate    float64 `json:"anonymous_publish_rate"`
	AnonymousPublishBurst   int     `json:"anonymous_publish_burst"`
	SubscribeRate           float64 `json:"subscribe_rate"`
	SubscribeBurst          int     `json:"subscribe_burst"`
	AnonymousReplayMessages int     `json:"anonymous_replay_messages"`
	AnonymousReplayBytes    int64   `json:"anonymous_replay_bytes"`
}

// DescribedPinging is the server's keepalive.
type DescribedPinging struct {
	PingInterval string `json:"ping_interval"`
	PingTimeout  string `json:"ping_timeout"`
}

func (s *Server) description() Description {
	l := s.cfg.Limits
	v := s.cfg.Version
	if v == "" {
		v = "dev"
	}
	return Description{
		Name:           "courier-relay",
		Version:        v,
		ProtocolLevels: []int{1, 2},
		PublicHost:     s.cfg.PublicHost,
		Limits: DescribedLimits{
			MaxMessageBytes:   l.MaxMessageBytes,
			MaxFrameBytes:     wire.MaxFrameBytes(l.MaxMessageBytes),
			MessageTTL:        l.MessageTTL.String(),
			DeliveryWait:      l.DeliveryWait.String(),
			SubscribeTimeout:  l.SubscribeTimeout.String(),
			NonceTTL:          l.NonceTTL.String(),
			PublishRate:       l.PublishRate,
			PublishBurst:      l.PublishBurst,
			MaxMessagesPerKey: l.MaxMessagesPerKey,
			MaxBytesPerKey:    l.MaxBytesPerKey,
			MaxConnections:    l.MaxConnections,

			MaxConnectionsPerIP:     l.MaxConnectionsPerIP,
			AnonymousPublishRate:    l.AnonymousPublishRate,
			AnonymousPublishBurst:   l.AnonymousPublishBurst,
			SubscribeRate:           l.SubscribeRate,
			SubscribeBurst:          l.SubscribeBurst,
			AnonymousReplayMessages: l.AnonymousReplayMessages,
			AnonymousReplayBytes:    l.AnonymousReplayBytes,
		},
		Keepalive: DescribedPinging{
			PingInterval: s.cfg.Keepalive.PingInterval.String(),
			PingTimeout:  s.cfg.Keepalive.PingTimeout.String(),
		},
		Offline: s.describeOffline(),
	}
}

func (s *Server) describeOffline() DescribedOffline {
	if s.bridge == nil {
		return DescribedOffline{}
	}
	return DescribedOffline{Enabled: true, After: s.cfg.offlineAfter().String()}
}

func (s *Server) serveHealthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) {
	if s.isClosing() {
		writeError(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	if s.draining.Load() {
		writeError(w, http.StatusServiceUnavailable, "draining: this instance is shutting down; connect to another")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if rd, ok := s.store.(Readier); ok {
		if err := rd.Ready(ctx); err != nil {
			writeError(w, http.StatusServiceUnavailable, "store: "+err.Error())
			return
		}
	}
	st, err := s.store.Stats(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "store: "+err.Error())
		return
	}
	if s.bridge != nil {
		if why := s.bridge.unready(); why != "" {
			writeError(w, http.StatusServiceUnavailable, why)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status":      "ready",
		"connections": s.nconns.Load(),
		"messages":    st.Messages,
		"bytes":       st.Bytes,
	})
}

// serveWebSocket accepts one client connection and starts its reader. The
// handler returns at once: the HTTP server's goroutine, request and
// response are not kept for the life of the connection (idle connections
// are cheap).
func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	maxConns := int64(s.cfg.Limits.MaxConnections)
	if n := s.nconns.Add(1); maxConns > 0 && n > maxConns {
		s.nconns.Add(-1)
		s.metrics.connsRefused.WithLabelValues("max_connections").Inc()
		w.Header().Set("Retry-After", "30")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("too many connections: this relay serves at most %d; retry later", maxConns))
		return
	}

	remote := clientAddr(r, s.trusted)
	addr, ok := s.clients.openConn(addrKey(remote))
	if !ok {
		s.nconns.Add(-1)
		s.metrics.connsRefused.WithLabelValues("max_connections_per_ip").Inc()
		w.Header().Set("Retry-After", "30")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("too many connections from your address: this relay serves at most %d per address; retry later", s.cfg.Limits.MaxConnectionsPerIP))
		return
	}

	id := s.nextID.Add(1)
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		srv:    s,
		id:     id,
		log:    s.log.With("conn", id),
		ctx:    ctx,
		cancel: cancel,
		q:      newSendQueue(s.cfg.Limits.SendQueue, s.cfg.Limits.SendQueueBytes),
		addr:   addr,
		sent:   sentIDs{max: max(4*s.cfg.Limits.SendQueue, 4096)},
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		cancel()
		s.clients.closeConn(addr)
		s.nconns.Add(-1)
		s.metrics.connsRefused.WithLabelValues("shutting_down").Inc()
		writeError(w, http.StatusServiceUnavailable, "shutting down; retry in a moment")
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	done := func() {
		cancel()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.clients.closeConn(addr)
		if c.peerState != nil {
			s.clients.releasePeer(c.peerState)
		}
		s.nconns.Add(-1)
		s.wg.Done()
	}

	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		// Browsers connect from pages of any origin (the deployed web
		// relay allows them). No cookie or ambient credential means
		// anything here: level 2 authenticates by signature.
		InsecureSkipVerify: true,
	})
	if err != nil {
		s.logClient(s.log, "websocket accept failed", []any{"remote", remote}, "err", err)
		done()
		return
	}
	c.ws = ws
	s.metrics.connections.Inc()
	s.logClient(c.log, "connected", []any{"remote", remote})
	go func() {
		defer done()
		defer s.metrics.connections.Dec()
		defer ws.CloseNow()
		c.serve()
		c.log.Debug("disconnected")
	}()
}
