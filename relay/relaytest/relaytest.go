// Package relaytest runs the real relay for other packages' tests: a
// relay.Server on a real SQLite file, served on a fixed loopback address so
// that it can be stopped, started again there, or swapped for a fresh
// server the way a rolling restart does.
package relaytest

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/sqlitestore"
)

// WaitTimeout bounds Restart's wait for the port to be free again.
const WaitTimeout = 15 * time.Second

// Relay is the real relay on a real SQLite file.
type Relay struct {
	t    testing.TB
	Cfg  relay.Config
	Addr string
	log  *slog.Logger

	mu      sync.Mutex
	store   *sqlitestore.Store
	srv     *relay.Server
	hs      *http.Server
	handler atomic.Pointer[http.Handler] // what hs serves; Swap replaces it
}

// Start starts a relay on 127.0.0.1 with test settings (public host
// "relay.test", synchronous "normal", no publish rate limit, delivery_wait
// 2s), changed by mutate, logging to logger (nil: nowhere). It stops when
// the test ends.
func Start(t testing.TB, mutate func(*relay.Config), logger *slog.Logger) *Relay {
	t.Helper()
	cfg := relay.DefaultConfig()
	cfg.PublicHost = "relay.test"
	cfg.Store.Path = filepath.Join(t.TempDir(), "relay.db")
	cfg.Store.Synchronous = "normal"
	cfg.Limits.PublishRate = 0
	cfg.Limits.DeliveryWait = 2 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{t: t, Cfg: cfg, Addr: ln.Addr().String(), log: logger}
	r.serve(ln)
	t.Cleanup(r.Stop)
	return r
}

// URL is the relay's WebSocket URL, for relay_url: wss:// when Cfg.TLS
// is set.
func (r *Relay) URL() string {
	if r.Cfg.TLS.Enabled() {
		return "wss://" + r.Addr + "/"
	}
	return "ws://" + r.Addr + "/"
}

func (r *Relay) serve(ln net.Listener) {
	r.t.Helper()
	// As courier-relay opens it: the quota is the store's to enforce.
	st, err := sqlitestore.Open(r.Cfg.Store.Path, sqlitestore.Options{
		Quota: r.Cfg.Limits.Quota(), Synchronous: r.Cfg.Store.Synchronous, MaxBatch: r.Cfg.Store.MaxBatch, Logger: r.log,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	srv, err := relay.New(r.Cfg, st, r.log)
	if err != nil {
		r.t.Fatal(err)
	}
	if r.Cfg.TLS.Enabled() { // as courier-relay serves [tls]
		certs, err := relay.NewCertReloader(r.Cfg.TLS.CertFile, r.Cfg.TLS.KeyFile, r.Cfg.TLS.ReloadInterval, r.log)
		if err != nil {
			r.t.Fatal(err)
		}
		ln = tls.NewListener(ln, certs.TLSConfig())
	}
	h := srv.Handler()
	r.handler.Store(&h)
	hs := &http.Server{ErrorLog: slog.NewLogLogger(r.log.Handler(), slog.LevelDebug), Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		(*r.handler.Load()).ServeHTTP(w, req)
	})}
	go hs.Serve(ln)
	r.mu.Lock()
	r.store, r.srv, r.hs = st, srv, hs
	r.mu.Unlock()
}

// Stop shuts the relay down as SIGTERM does: every connection gets 1012.
// Stopping a stopped relay does nothing.
func (r *Relay) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv == nil {
		return
	}
	r.hs.Close() // the listener; hijacked WebSockets are the relay's to close
	if err := r.srv.Close(); err != nil {
		r.t.Errorf("relay close: %v", err)
	}
	if err := r.store.Close(); err != nil {
		r.t.Errorf("relay store close: %v", err)
	}
	r.srv = nil
}

// Restart starts the relay again on the same address and database.
func (r *Relay) Restart() {
	r.t.Helper()
	var ln net.Listener
	var err error
	deadline := time.Now().Add(WaitTimeout)
	for {
		if ln, err = net.Listen("tcp", r.Addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the port is being released
	}
	if err != nil {
		r.t.Fatal(err)
	}
	r.serve(ln)
}

// Swap restarts the relay server as a rolling restart does: a new server on
// the same store takes over the listener at once, then the old one shuts
// down, closing its connections with 1012.
func (r *Relay) Swap() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	next, err := relay.New(r.Cfg, r.store, r.log)
	if err != nil {
		r.t.Fatal(err)
	}
	h := next.Handler()
	r.handler.Store(&h)
	if err := r.srv.Close(); err != nil {
		r.t.Errorf("relay close: %v", err)
	}
	r.srv = next
}

// WebSocketOnlyURL returns the URL of a reverse proxy in front of the relay
// that passes WebSocket upgrades and answers 404 to everything else, as a
// proxy set up for the WebSocket alone does: the relay's description at
// GET / is out of reach through it.
func (r *Relay) WebSocketOnlyURL(t testing.TB) string {
	t.Helper()
	target, err := url.Parse("http://" + r.Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
			http.NotFound(w, req)
			return
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/"
}
