package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"courier/localapi"
	"courier/sidecar"
)

// runSidecar runs until ctx is done. Shutdown order: stop taking requests
// (in-flight ones finish, so every 202 given is committed), stop the engine
// (the relay connection closes cleanly), close the store.
func runSidecar(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("courier", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "courier.toml", "the sidecar's TOML configuration `file`")
	listen := fs.String("listen", "", "local API address, overriding api.listen")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fileCfg, err := sidecar.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	// Flags override the file, at start and at every reload.
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
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.Log.SlogLevel()}))

	engine, err := sidecar.New(cfg, logger.With("component", "engine"), sidecar.Options{})
	if err != nil {
		return err
	}
	defer engine.Close()

	ln, err := net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		return fmt.Errorf("api.listen: %w", err)
	}
	api := localapi.New(engine, cfg.API.Token, logger.With("component", "localapi"))
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	// Shutdown waits for requests in flight, so that every 202 given is
	// committed; a long poll of the inbox is answered at once instead.
	srv.RegisterOnShutdown(api.EndLongPolls)
	logger.Info("courier started", "version", version, "api", ln.Addr().String(), "relay_configured", cfg.RelayURL != "", "store", cfg.Store.Path)

	engineCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	engineDone := make(chan error, 1)
	go func() { engineDone <- engine.Run(engineCtx) }()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ln) }()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watchDone := make(chan error, 1)
	go func() {
		// Watch compares file with file; the engine gets the file with the
		// flags applied, as at start.
		watchDone <- sidecar.Watch(watchCtx, *configPath, fileCfg, logger.With("component", "config"), func(next sidecar.Config) {
			next = override(next)
			if err := engine.Reconfigure(next); err != nil {
				logger.Error("config change refused; the last good config stays in force", "err", err)
				return
			}
			if next.API != cfg.API {
				logger.Warn("api settings changed; they take effect at the next restart")
			}
			logger.Info("config reloaded", "relay_configured", next.RelayURL != "")
		})
	}()

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveDone:
		runErr = fmt.Errorf("local API: %w", err)
	case err := <-engineDone:
		engineDone <- err
		runErr = fmt.Errorf("engine stopped: %w", err)
	case err := <-watchDone:
		watchDone <- err
		if err != nil {
			runErr = fmt.Errorf("config watch: %w", err)
		}
	}
	logger.Info("courier stopping")
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Warn("local API shutdown", "err", err)
	}
	stopEngine()
	if err := <-engineDone; err != nil && runErr == nil {
		runErr = err
	}
	stopWatch()
	<-watchDone
	if err := engine.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("close store: %w", err)
	}
	logger.Info("courier stopped")
	return runErr
}
