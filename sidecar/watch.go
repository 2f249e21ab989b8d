package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatchDebounce is how long [Watch] waits after the last change to the
// config file before reloading it, so that an editor's several writes are
// read once.
const WatchDebounce = 100 * time.Millisecond

// Watch watches the config file at path until ctx is done, then returns nil.
//
// It watches path's directory (github.com/fsnotify/fsnotify), so an editor
// that saves by writing a new file and renaming it over the old one is seen
// as well as an edit in place. After a change it waits [WatchDebounce], then
// reloads with [LoadConfig] and [Config.Validate], and calls onChange with
// the new config only if it is valid and differs from the last good one
// (initially, initial). A bad edit, or a deleted file, is logged with the
// error and the last good config stays in force until a later good edit.
//
// Once the watch is in place, Watch reloads once, so an edit made between
// the caller's LoadConfig and Watch is not missed. onChange runs on Watch's
// goroutine, one call at a time; it should return promptly. Watch returns
// an error at once if it cannot watch the directory. A nil logger means
// [slog.Default].
func Watch(ctx context.Context, path string, initial Config, logger *slog.Logger, onChange func(Config)) error {
	if logger == nil {
		logger = slog.Default()
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("watch config %s: %w", path, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch config %s: %w", path, err)
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(abs)); err != nil {
		return fmt.Errorf("watch config %s: directory %s: %w", path, filepath.Dir(abs), err)
	}

	last := initial
	reload := func() {
		cfg, err := LoadConfig(path)
		if err == nil {
			err = cfg.Validate()
		}
		switch {
		case errors.Is(err, fs.ErrNotExist):
			logger.Warn("config file is gone; keeping the last good config", "path", path, "err", err)
			return
		case err != nil:
			logger.Error("config edit refused; keeping the last good config", "path", path, "err", err)
			return
		case cfg == last:
			return
		}
		last = cfg
		logger.Info("config reloaded", "path", path)
		onChange(cfg)
	}
	reload()

	debounce := time.NewTimer(WatchDebounce)
	debounce.Stop()
	defer debounce.Stop()
	var fire <-chan time.Time // debounce.C while a reload is pending
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("watch config %s: watcher stopped", path)
			}
			// The directory may hold other files (the SQLite queue, with
			// its busy WAL): only the config file's own name counts.
			if filepath.Clean(ev.Name) != abs || ev.Op == fsnotify.Chmod {
				continue
			}
			debounce.Reset(WatchDebounce)
			fire = debounce.C
		case err, ok := <-w.Errors:
			if !ok {
				return fmt.Errorf("watch config %s: watcher stopped", path)
			}
			// Typically an overflowed event queue: reload to be sure.
			logger.Warn("config watch error; reloading", "path", path, "err", err)
			debounce.Reset(WatchDebounce)
			fire = debounce.C
		case <-fire:
			fire = nil
			reload()
		}
	}
}
