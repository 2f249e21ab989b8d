package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"courier/localapi"
	"courier/sidecar"
)

// errHelp is returned by ParseFlags for -h: nothing to run.
var errHelp = errors.New("help requested")

// shutdownTimeout bounds how long Run waits for requests in flight once it
// is told to stop.
const shutdownTimeout = 10 * time.Second

// Main is the courier sidecar as a value that tests can drive in-process:
// NewMain, ParseFlags, Open (binds the local API and opens the store, every
// failure at once), Addr, Run until its ctx ends, Close.
type Main struct {
	// Config is the configuration in force at start: the file with the
	// flags applied. ParseFlags sets it; a test may adjust it before Open.
	Config sidecar.Config
	// ConfigPath is the file watched for changes while Run runs; empty
	// means no watch.
	ConfigPath string
	Logger     *slog.Logger
	// Options tune the engine (zero values: its defaults).
	Options sidecar.Options

	stderr   io.Writer
	fileCfg  sidecar.Config                      // the file as read, without the flags
	override func(sidecar.Config) sidecar.Config // applies the flags, at start and at every reload

	engine *sidecar.Engine
	api    *localapi.Server
	srv    *http.Server
	ln     net.Listener

	mu     sync.Mutex
	ran    bool
	closed bool
}

// NewMain returns a Main that logs JSON to stderr.
func NewMain(stderr io.Writer) *Main {
	return &Main{
		Config:   sidecar.DefaultConfig(),
		Logger:   slog.New(slog.NewJSONHandler(stderr, nil)),
		stderr:   stderr,
		override: func(c sidecar.Config) sidecar.Config { return c },
	}
}

// ParseFlags reads the command line and the configuration file it names,
// applies the flags over the file and validates the result: every bad key
// is named here, before anything is opened.
func (m *Main) ParseFlags(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("courier", flag.ContinueOnError)
	var usage bytes.Buffer
	fs.SetOutput(&usage)
	configPath := fs.String("config", "courier.toml", "the sidecar's TOML configuration `file`")
	listen := fs.String("listen", "", "local API `address`, overriding api.listen (e.g. 127.0.0.1:0)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			_, _ = io.Copy(stdout, &usage)
			return errHelp
		}
		return fmt.Errorf("%w\n%s", err, usage.String())
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: courier takes only flags (or the subcommands status, version)", fs.Args())
	}
	fileCfg, err := sidecar.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	override := func(c sidecar.Config) sidecar.Config {
		if *listen != "" {
			c.API.Listen = *listen
		}
		return c
	}
	cfg := override(fileCfg)
	if err := cfg.Validate(); err != nil {
		if *listen != "" {
			return fmt.Errorf("%w\n(api.listen is set by -listen %q)", err, *listen)
		}
		return err
	}
	m.Config, m.fileCfg, m.override, m.ConfigPath = cfg, fileCfg, override, *configPath
	m.Logger = slog.New(slog.NewJSONHandler(m.stderr, &slog.HandlerOptions{Level: cfg.Log.SlogLevel()}))
	return nil
}

// Open opens the store (refused at once when another courier holds it) and
// binds the local API's address (refused at once when it is taken). It
// does not deliver or serve yet: Run does.
func (m *Main) Open() error {
	if m.ConfigPath == "" {
		m.fileCfg = m.Config
	}
	engine, err := sidecar.New(m.Config, m.Logger.With("component", "engine"), m.Options)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", m.Config.API.Listen)
	if err != nil {
		engine.Close()
		return fmt.Errorf("api.listen: %w", err)
	}
	m.engine, m.ln = engine, ln
	m.api = localapi.New(engine, m.Config.API.Token, m.Logger.With("component", "localapi"))
	m.srv = &http.Server{
		Handler:           m.api,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(m.Logger.Handler(), slog.LevelWarn),
	}
	// Shutdown waits for requests in flight, so that every 202 given is
	// committed; a long poll of the inbox is answered at once instead.
	m.srv.RegisterOnShutdown(m.api.EndLongPolls)
	// Operators and the process-level test harness read the address here.
	m.Logger.Info("courier started", "version", version, "api", ln.Addr().String(),
		"relay_configured", m.Config.RelayURL != "", "store", m.Config.Store.Path)
	return nil
}

// Addr is the local API's bound address, once Open has succeeded.
func (m *Main) Addr() net.Addr { return m.ln.Addr() }

// Engine is the delivery engine, once Open has succeeded.
func (m *Main) Engine() *sidecar.Engine { return m.engine }

// Run serves the local API, delivers and follows the config file until ctx
// ends or one of them fails. Then it stops in order: no new requests, the
// ones in flight finish (so every 202 given is committed), the engine stops
// (the relay connection closes cleanly), the watch ends. It returns nil
// when stopped by ctx. Call it once, after Open; Close afterwards.
func (m *Main) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.ran || m.closed || m.engine == nil {
		m.mu.Unlock()
		return errors.New("courier: Run needs a Main that is open and has not run yet")
	}
	m.ran = true
	m.mu.Unlock()

	// The engine and the watch stop only when the HTTP server has finished
	// the requests in flight: their context is not ctx.
	engineCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	g, gctx := errgroup.WithContext(engineCtx)
	g.Go(func() error {
		if err := m.engine.Run(gctx); err != nil {
			return fmt.Errorf("engine stopped: %w", err)
		}
		return nil
	})
	if m.ConfigPath != "" {
		g.Go(func() error {
			if err := sidecar.Watch(gctx, m.ConfigPath, m.fileCfg, m.Logger.With("component", "config"), m.reload); err != nil {
				return fmt.Errorf("config watch: %w", err)
			}
			return nil
		})
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.srv.Serve(m.ln) }()

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		serveErr <- err
		runErr = fmt.Errorf("local API: %w", err)
	case <-gctx.Done(): // the engine or the watch failed
	}
	m.Logger.Info("courier stopping")
	shutCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := m.srv.Shutdown(shutCtx); err != nil {
		m.Logger.Warn("local API shutdown", "err", err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) && runErr == nil {
		runErr = fmt.Errorf("local API: %w", err)
	}
	stopEngine()
	if err := g.Wait(); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// reload puts a changed config file in force: the engine gets the file
// with the flags applied, as at start.
func (m *Main) reload(next sidecar.Config) {
	next = m.override(next)
	if err := m.engine.Reconfigure(next); err != nil {
		m.Logger.Error("config change refused; the last good config stays in force", "err", err)
		return
	}
	if next.API != m.Config.API {
		m.Logger.Warn("api settings changed; they take effect at the next restart")
	}
	m.Logger.Info("config reloaded", "relay_configured", next.RelayURL != "")
}

// Close releases what Open took: the listener (if Run did not) and the
// store. It is idempotent; call it after Run has returned.
func (m *Main) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	if m.srv != nil && !m.ran {
		if err := m.ln.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close listener: %w", err))
		}
	}
	if m.engine != nil {
		if err := m.engine.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	m.Logger.Info("courier stopped")
	return errors.Join(errs...)
}
