package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// watchWait bounds every wait in these tests; nothing takes near as long
// unless a change is missed.
const watchWait = 10 * time.Second

// watchTOML is a valid config; relay and level vary it.
func watchTOML(relay, level string) string {
	var b strings.Builder
	if relay != "" {
		fmt.Fprintf(&b, "relay_url = %q   # delete this line to opt out of INDIRECT\n", relay)
	}
	b.WriteString(`
[node]
offline_publish_url = "http://127.0.0.1:4002/courier/offline"
sign_url = "http://127.0.0.1:4002/ob/signmessage"
`)
	fmt.Fprintf(&b, "[log]\nlevel = %q\n", level)
	return b.String()
}

// recordHandler sends the message and attributes of every log record to a
// channel, so a test can wait for a log line.
type recordHandler struct{ ch chan string }

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	select {
	case h.ch <- b.String():
	default: // a test that does not read logs must not block Watch
	}
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }

type watchHarness struct {
	t       *testing.T
	dir     string
	path    string
	changes chan Config
	logs    chan string
	done    chan error
	cancel  context.CancelFunc
}

// startWatch writes content to a config file in a new directory, loads it,
// and runs Watch on it until the test ends.
func startWatch(t *testing.T, content string) *watchHarness {
	t.Helper()
	h := &watchHarness{
		t:       t,
		dir:     t.TempDir(),
		changes: make(chan Config, 16),
		logs:    make(chan string, 256),
		done:    make(chan error, 1),
	}
	h.path = filepath.Join(h.dir, "courier.toml")
	h.write(content)
	initial, err := LoadConfig(h.path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	logger := slog.New(recordHandler{h.logs})
	go func() {
		h.done <- Watch(ctx, h.path, initial, logger, func(c Config) { h.changes <- c })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(watchWait):
			t.Error("Watch did not return after its context ended")
		}
	})
	return h
}

// write edits the file in place, as `echo … > file` does.
func (h *watchHarness) write(content string) {
	h.t.Helper()
	if err := os.WriteFile(h.path, []byte(content), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

// replace writes a new file and renames it over the config, as many
// editors save.
func (h *watchHarness) replace(content string) {
	h.t.Helper()
	tmp := filepath.Join(h.dir, ".courier.toml.swp")
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Rename(tmp, h.path); err != nil {
		h.t.Fatal(err)
	}
}

func (h *watchHarness) waitChange() Config {
	h.t.Helper()
	select {
	case c := <-h.changes:
		return c
	case err := <-h.done:
		h.t.Fatalf("Watch returned %v while waiting for a change", err)
	case <-time.After(watchWait):
		h.t.Fatal("no config change seen")
	}
	return Config{}
}

// waitLog waits for a log line containing all of subs.
func (h *watchHarness) waitLog(subs ...string) string {
	h.t.Helper()
	timeout := time.After(watchWait)
	for {
		select {
		case line := <-h.logs:
			ok := true
			for _, s := range subs {
				ok = ok && strings.Contains(line, s)
			}
			if ok {
				return line
			}
		case <-timeout:
			h.t.Fatalf("no log line containing %q", subs)
			return ""
		}
	}
}

// noChange checks that no change has been reported (so far).
func (h *watchHarness) noChange() {
	h.t.Helper()
	select {
	case c := <-h.changes:
		h.t.Fatalf("unexpected config change: %+v", c)
	default:
	}
}

func TestWatchEditInPlace(t *testing.T) {
	h := startWatch(t, watchTOML("ws://127.0.0.1:8080/", "info"))
	h.write(watchTOML("ws://127.0.0.1:8080/", "debug"))
	if c := h.waitChange(); c.Log.Level != "debug" || c.RelayURL != "ws://127.0.0.1:8080/" {
		t.Fatalf("after the edit: %+v", c)
	}
	// Store paths are resolved as LoadConfig does.
	h.write(watchTOML("ws://127.0.0.1:8080/", "warn"))
	if c := h.waitChange(); c.Log.Level != "warn" || c.Store.Path != filepath.Join(h.dir, "courier.db") {
		t.Fatalf("after the second edit: %+v", c)
	}
}

func TestWatchReplaceByRename(t *testing.T) {
	h := startWatch(t, watchTOML("ws://127.0.0.1:8080/", "info"))
	h.replace(watchTOML("wss://relay.example.org/", "info"))
	if c := h.waitChange(); c.RelayURL != "wss://relay.example.org/" {
		t.Fatalf("after the rename: %+v", c)
	}
	// The watch survives the replacement: the new file is watched too.
	h.replace(watchTOML("wss://relay.example.org/", "error"))
	if c := h.waitChange(); c.Log.Level != "error" {
		t.Fatalf("after the second rename: %+v", c)
	}
}

// TestWatchOptOut: deleting the relay_url line turns INDIRECT off; putting
// it back turns it on again.
func TestWatchOptOut(t *testing.T) {
	const relay = "ws://127.0.0.1:8080/"
	content := watchTOML(relay, "info")
	h := startWatch(t, content)

	var kept []string
	for line := range strings.Lines(content) {
		if !strings.HasPrefix(line, "relay_url") {
			kept = append(kept, line)
		}
	}
	h.write(strings.Join(kept, ""))
	if c := h.waitChange(); c.RelayURL != "" {
		t.Fatalf("after deleting relay_url: RelayURL = %q, want empty", c.RelayURL)
	}
	h.write(content)
	if c := h.waitChange(); c.RelayURL != relay {
		t.Fatalf("after putting relay_url back: RelayURL = %q, want %q", c.RelayURL, relay)
	}
}

// TestWatchBadEdit: a bad edit is logged with its error and changes
// nothing; a later good edit applies.
func TestWatchBadEdit(t *testing.T) {
	h := startWatch(t, watchTOML("ws://127.0.0.1:8080/", "info"))

	h.replace(watchTOML("ws://127.0.0.1:8080/", "info") + "bogus_key = 1\n")
	h.waitLog("ERROR", "keeping the last good config", "bogus_key: unknown key", h.path)
	h.noChange()

	// Invalid but parseable: refused by Validate.
	h.replace(watchTOML("http://not-a-websocket/", "info"))
	h.waitLog("ERROR", "relay_url:")
	h.noChange()

	// A list of relays: refused with its own message.
	h.replace(`relay_url = ["ws://a/", "ws://b/"]` + "\n" + watchTOML("", "info"))
	h.waitLog("ERROR", "exactly one relay URL is supported")
	h.noChange()

	// Deleted: the last good config stays.
	if err := os.Remove(h.path); err != nil {
		t.Fatal(err)
	}
	h.waitLog("WARN", "config file is gone")
	h.noChange()

	h.write(watchTOML("ws://127.0.0.1:9090/", "info"))
	if c := h.waitChange(); c.RelayURL != "ws://127.0.0.1:9090/" {
		t.Fatalf("after the good edit: %+v", c)
	}
}

// TestWatchSameConfig: a save that changes nothing that matters (a comment)
// does not call onChange.
func TestWatchSameConfig(t *testing.T) {
	h := startWatch(t, watchTOML("ws://127.0.0.1:8080/", "info"))
	h.write("# a comment\n" + watchTOML("ws://127.0.0.1:8080/", "info"))
	// Other files in the directory are not the config.
	if err := os.WriteFile(filepath.Join(h.dir, "courier.db"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.write(watchTOML("ws://127.0.0.1:8080/", "debug"))
	// The first change reported is the level: the comment-only save was
	// not one.
	if c := h.waitChange(); c.Log.Level != "debug" {
		t.Fatalf("first change = %+v, want the level edit", c)
	}
	h.noChange()
}

// TestWatchCatchesUp: an edit made after the caller loaded the config but
// before Watch started is not missed.
func TestWatchCatchesUp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "courier.toml")
	if err := os.WriteFile(path, []byte(watchTOML("", "info")), 0o600); err != nil {
		t.Fatal(err)
	}
	initial, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(watchTOML("ws://127.0.0.1:8080/", "info")), 0o600); err != nil {
		t.Fatal(err)
	}
	changes := make(chan Config, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, path, initial, slog.New(slog.DiscardHandler), func(c Config) { changes <- c })
	}()
	select {
	case c := <-changes:
		if c.RelayURL == "" {
			t.Errorf("caught-up config: %+v", c)
		}
	case <-time.After(watchWait):
		t.Error("the edit before Watch started was missed")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch = %v, want nil", err)
	}
}

// TestWatchStops: Watch returns nil once its context ends, and leaves no
// goroutine behind.
func TestWatchStops(t *testing.T) {
	before := runtime.NumGoroutine()
	dir := t.TempDir()
	path := filepath.Join(dir, "courier.toml")
	if err := os.WriteFile(path, []byte(watchTOML("", "info")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	// An edit after LoadConfig: Watch reports it once its watch is in
	// place, so the cancel below stops a running watch, not one that has
	// not started yet.
	if err := os.WriteFile(path, []byte(watchTOML("", "debug")), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := make(chan Config, 1)
	go func() { done <- Watch(ctx, path, cfg, slog.New(slog.DiscardHandler), func(c Config) { started <- c }) }()
	select {
	case <-started:
	case <-time.After(watchWait):
		t.Fatal("Watch did not start")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Watch = %v, want nil", err)
		}
	case <-time.After(watchWait):
		t.Fatal("Watch did not return after cancel")
	}
	// Goroutines end asynchronously; wait for the count to come back.
	deadline := time.Now().Add(watchWait)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before Watch, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond) // polling a condition, not waiting a fixed time
	}

	// A directory that cannot be watched is an error at once.
	if err := Watch(context.Background(), filepath.Join(dir, "missing", "courier.toml"), cfg, nil, func(Config) {}); err == nil {
		t.Error("Watch of a missing directory succeeded")
	}
}

// TestWatchFollowsSymlinks: a config file mounted from a Kubernetes
// ConfigMap is a link to "..data/<name>", and "..data" a link to a
// timestamped directory; an update writes a new directory and swaps the
// "..data" link atomically (rename), then deletes the old directory. Watch
// sees every swap.
func TestWatchFollowsSymlinks(t *testing.T) {
	dir := t.TempDir()
	gen := 0
	swap := func(content string) {
		t.Helper()
		gen++
		data := fmt.Sprintf("..2026_12_01_00_00_%02d.%d", gen, gen)
		if err := os.Mkdir(filepath.Join(dir, data), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, data, "courier.toml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		old, _ := os.Readlink(filepath.Join(dir, "..data"))
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(data, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if old != "" {
			if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
				t.Fatal(err)
			}
		}
	}
	swap(watchTOML("ws://127.0.0.1:8080/", "info"))
	path := filepath.Join(dir, "courier.toml")
	if err := os.Symlink(filepath.Join("..data", "courier.toml"), path); err != nil {
		t.Fatal(err)
	}
	initial, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	h := &watchHarness{t: t, dir: dir, path: path, changes: make(chan Config, 16), logs: make(chan string, 256), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		h.done <- Watch(ctx, path, initial, slog.New(recordHandler{h.logs}), func(c Config) { h.changes <- c })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(watchWait):
			t.Error("Watch did not return after its context ended")
		}
	})
	// Nothing changes until the first swap: wait for the watch to be in
	// place by way of a swap that does change something.
	swap(watchTOML("ws://127.0.0.1:8080/", "debug"))
	if c := h.waitChange(); c.Log.Level != "debug" {
		t.Fatalf("after the first swap: %+v", c)
	}
	swap(watchTOML("wss://relay.example.org/", "debug"))
	if c := h.waitChange(); c.RelayURL != "wss://relay.example.org/" {
		t.Fatalf("after the second swap: %+v", c)
	}
	swap(watchTOML("", "debug"))
	if c := h.waitChange(); c.RelayURL != "" {
		t.Fatalf("after the third swap (opt-out): %+v", c)
	}
}
