// Command courier-relay is the Courier relay server: a store-and-forward
// WebSocket relay for OpenBazaar nodes (see PROTOCOL.md).
//
//	courier-relay [-config FILE] [-listen ADDR]
//
// Without -config it runs on the defaults of relay.DefaultConfig. -listen
// overrides the file's listen key. SIGINT or SIGTERM shut it down
// gracefully: every client is closed with 1012 and the store commits what it
// was handed. The version is set at build time with
// -ldflags "-X main.version=…".
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"courier/relay"
	"courier/relay/redisstore"
	"courier/relay/sqlitestore"
	"courier/relay/webclient"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "courier-relay:", err)
		os.Exit(1)
	}
}

// errHelp is returned by ParseFlags for -h and -version: nothing to run.
var errHelp = errors.New("help requested")

// run is the whole program: parse, open, serve until ctx ends, shut down.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	m := NewMain(stderr)
	if err := m.ParseFlags(args, stdout); err != nil {
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	}
	if err := m.Open(); err != nil {
		return err
	}
	var serveErr error
	select {
	case <-ctx.Done():
		m.Logger.Info("signal received: draining, then shutting down", "drain_delay", m.Config.DrainDelay)
		m.Drain(m.Config.DrainDelay)
	case serveErr = <-m.ServeErr():
		m.Logger.Error("serving failed: shutting down", "err", serveErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), m.Config.ShutdownTimeout)
	defer cancel()
	return errors.Join(serveErr, m.Close(sctx))
}

// Main is courier-relay as a value that tests can drive: ParseFlags, Open,
// Addr, Close.
type Main struct {
	Config relay.Config
	Logger *slog.Logger

	stderr   io.Writer
	store    relay.Store
	srv      *relay.Server
	httpSrv  *http.Server
	ln       net.Listener
	serveErr chan error
	closed   bool
}

// NewMain returns a Main on the default configuration that logs to stderr.
func NewMain(stderr io.Writer) *Main {
	return &Main{
		Config:   relay.DefaultConfig(),
		Logger:   slog.New(slog.NewTextHandler(stderr, nil)),
		stderr:   stderr,
		serveErr: make(chan error, 1),
	}
}

// ParseFlags reads the command line and the configuration file it names,
// and validates the result.
func (m *Main) ParseFlags(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("courier-relay", flag.ContinueOnError)
	var usage bytes.Buffer
	fs.SetOutput(&usage)
	configPath := fs.String("config", "", "TOML configuration `file` (default: built-in defaults)")
	listen := fs.String("listen", "", "listen `address`, overriding the file's listen key (e.g. :8080)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			_, _ = io.Copy(stdout, &usage)
			return errHelp
		}
		return fmt.Errorf("%v\n%s", err, usage.String())
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: courier-relay takes only flags", fs.Args())
	}
	if *showVersion {
		fmt.Fprintln(stdout, "courier-relay", version)
		return errHelp
	}
	cfg := relay.DefaultConfig()
	if *configPath != "" {
		f, err := os.Open(*configPath)
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		cfg, err = relay.ParseConfig(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", *configPath, err)
		}
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	cfg.Version = version
	cfg.Client = webclient.FS() // the browser light client, at /client/
	if err := cfg.Validate(); err != nil {
		return err
	}
	level, _ := relay.ParseLogLevel(cfg.LogLevel) // validated
	m.Config = cfg
	m.Logger = slog.New(slog.NewTextHandler(m.stderr, &slog.HandlerOptions{Level: level}))
	return nil
}

// Open opens the store, binds the listener and starts serving. Every
// failure (the database in use by another relay, the address taken) is
// returned at once.
func (m *Main) Open() error {
	cfg := m.Config
	var srvp atomic.Pointer[relay.Server]
	onCommit := func(batch int, d time.Duration) {
		if s := srvp.Load(); s != nil {
			s.ObserveCommit(batch, d)
		}
	}
	st, err := m.openStore(onCommit)
	if err != nil {
		return err
	}
	m.store = st

	srv, err := relay.New(cfg, st, m.Logger.With("component", "relay"))
	if err != nil {
		st.Close()
		return err
	}
	srvp.Store(srv)
	m.srv = srv

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		srv.Close()
		st.Close()
		return fmt.Errorf("listen: %w", err)
	}
	scheme := "http"
	if cfg.TLS.Enabled() {
		certs, err := relay.NewCertReloader(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ReloadInterval, m.Logger.With("component", "tls"))
		if err != nil {
			ln.Close()
			srv.Close()
			st.Close()
			return err
		}
		// HTTP/1.1 only (NextProtos): a WebSocket upgrade is HTTP/1.1.
		ln = tls.NewListener(ln, certs.TLSConfig())
		scheme = "https"
	}
	m.ln = ln
	m.httpSrv = &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// net/http names the client in some lines (TLS handshake errors).
		ErrorLog: log.New(relay.RedactingWriter(slog.NewLogLogger(m.Logger.Handler(), slog.LevelWarn).Writer(), cfg.Log.ClientDetails), "", 0),
	}
	go func() {
		if err := m.httpSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			m.serveErr <- err
		}
	}()
	where := cfg.Store.Path
	if cfg.Store.Driver == "redis" {
		where = "redis " + redactURL(cfg.Store.URL)
		if cfg.Store.URL == "" {
			where = "redis sentinel " + cfg.Store.MasterName
		}
	}
	m.Logger.Info("courier-relay listening", "addr", ln.Addr().String(), "scheme", scheme, "version", version,
		"public_host", cfg.PublicHost, "store", where, "offline_bridge", cfg.Offline != nil)
	return nil
}

// redactURL returns a URL fit for a log line: a password in it (store.url
// may be redis://user:password@host:6379/0) is replaced by "xxxxx", while
// the scheme, user, host, path and database stay. A string that is not a
// URL is not logged at all (net/url's error would quote it whole).
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "[not a URL]"
	}
	return u.Redacted()
}

// openStore opens the store the configuration names.
func (m *Main) openStore(onCommit func(int, time.Duration)) (relay.Store, error) {
	cfg := m.Config
	logger := m.Logger.With("component", "store")
	if cfg.Store.Driver == "redis" {
		rdb, err := redisstore.NewClient(cfg.Store)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := redisstore.Open(ctx, rdb, redisstore.Options{
			Quota:     cfg.Limits.Quota(),
			Namespace: cfg.Store.Namespace,
			MaxBatch:  cfg.Store.MaxBatch,
			OnCommit:  onCommit,
			Logger:    logger,
		})
		if err != nil {
			rdb.Close()
			return nil, fmt.Errorf("open store: %w", err)
		}
		return st, nil
	}
	st, err := sqlitestore.Open(cfg.Store.Path, sqlitestore.Options{
		Quota:       cfg.Limits.Quota(),
		Synchronous: cfg.Store.Synchronous,
		MaxBatch:    cfg.Store.MaxBatch,
		OnCommit:    onCommit,
		Logger:      logger,
	})
	if errors.Is(err, sqlitestore.ErrLocked) {
		return nil, err // it names the lock file and says what to do
	}
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	return st, nil
}

// Drain reports not ready (/readyz 503) for d while still serving, so
// that the front (HAProxy) takes this instance out of rotation before its
// connections are closed.
func (m *Main) Drain(d time.Duration) {
	if m.srv == nil || d <= 0 {
		return
	}
	m.srv.Drain()
	time.Sleep(d)
}

// Addr is the bound address, once Open has succeeded.
func (m *Main) Addr() net.Addr { return m.ln.Addr() }

// ServeErr yields an error if serving stops on its own.
func (m *Main) ServeErr() <-chan error { return m.serveErr }

// Close shuts down gracefully: stop accepting, close every client with
// 1012, wait for them, then close the store, which commits what is queued.
// When ctx ends first, the remaining clients are dropped.
func (m *Main) Close(ctx context.Context) error {
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	if m.srv != nil {
		if err := m.srv.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if m.httpSrv != nil {
		if err := m.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
	}
	if m.store != nil {
		if err := m.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	if len(errs) == 0 {
		m.Logger.Info("courier-relay stopped")
	}
	return errors.Join(errs...)
}
