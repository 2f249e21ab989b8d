package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
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
// as well as an edit in place. A config file reached through symbolic
// links is followed: the directories of every link on the way and of the
// file itself are watched, and a change to any of those links counts, so a
// Kubernetes ConfigMap, whose "..data" link is swapped to a new directory
// at each update, is seen. After a change it waits [WatchDebounce], then
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
	// The directory with its own links resolved, so that the names in
	// events and in the link chain below are spelt alike.
	if dir, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(dir, filepath.Base(abs))
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch config %s: %w", path, err)
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(abs)); err != nil {
		return fmt.Errorf("watch config %s: directory %s: %w", path, filepath.Dir(abs), err)
	}
	watched := map[string]bool{filepath.Dir(abs): true}
	names := map[string]bool{abs: true} // the names whose change counts
	follow := func() {
		links, target := linkChain(abs)
		next := map[string]bool{abs: true, target: true}
		dirs := map[string]bool{filepath.Dir(abs): true, filepath.Dir(target): true}
		for _, l := range links {
			next[l] = true
			dirs[filepath.Dir(l)] = true
		}
		names = next
		for d := range dirs {
			if !watched[d] {
				if err := w.Add(d); err != nil {
					logger.Warn("cannot watch a directory the config file's links go through", "dir", d, "err", err)
					continue
				}
				watched[d] = true
			}
		}
		for d := range watched {
			if !dirs[d] {
				_ = w.Remove(d) // gone already, as a swapped-out ConfigMap directory is: nothing to do
				delete(watched, d)
			}
		}
	}
	follow()

	last := initial
	reload := func() {
		follow()
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
			// its busy WAL): only the config file's own name, and the
			// links on the way to it, count.
			if !names[filepath.Clean(ev.Name)] || ev.Op == fsnotify.Chmod {
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

// linkChain follows the symbolic links on the way to the file at abs: abs
// itself, and within its directory, the directories it passes through
// (a ConfigMap's "..data"). It returns every link met, as the path of the
// link, and the file finally reached. Links outside abs's directory are
// followed but only the last element of each path is checked, so that a
// link high up (/var → /private/var) does not make Watch watch "/".
func linkChain(abs string) (links []string, target string) {
	base := filepath.Dir(abs)
	cur := abs
	for range 40 { // as the kernel, give up on a loop
		link := ""
		for p := cur; ; p = filepath.Dir(p) {
			if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				link = p
				break
			}
			parent := filepath.Dir(p)
			if p == cur && !strings.HasPrefix(cur, base+string(filepath.Separator)) {
				break // outside the config's directory: only the file itself
			}
			if parent == base || parent == p || !strings.HasPrefix(parent, base+string(filepath.Separator)) {
				break
			}
		}
		if link == "" {
			return links, cur
		}
		dest, err := os.Readlink(link)
		if err != nil {
			return links, cur
		}
		if !filepath.IsAbs(dest) {
			dest = filepath.Join(filepath.Dir(link), dest)
		}
		rest, err := filepath.Rel(link, cur)
		if err != nil {
			return links, cur
		}
		links = append(links, link)
		cur = filepath.Clean(filepath.Join(dest, rest))
	}
	return links, cur
}
