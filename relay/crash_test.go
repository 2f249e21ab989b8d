package relay_test

import (
	"bufio"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"courier/relay"
	"courier/relay/sqlitestore"
	"courier/wire"
)

// childDBEnv, when set, makes the test binary a relay child process on the
// database it names (see TestCrashRestart).
const childDBEnv = "COURIER_RELAY_TEST_CHILD_DB"

// TestMain runs the test binary as a child relay when the environment
// asks for one (crash test, idle-connection benchmark).
func TestMain(m *testing.M) {
	for env, child := range map[string]func(string) error{childDBEnv: runChild, idleChildEnv: runIdleChild, benchChildEnv: runBenchChild, redisBenchChildEnv: runRedisBenchChild, abuseChildEnv: runAbuseChild, spinEnv: runSpinChild} {
		if path := os.Getenv(env); path != "" {
			err := child(path)
			fmt.Fprintln(os.Stderr, "child relay:", err)
			os.Exit(1)
		}
	}
	base := runtime.NumGoroutine()
	code := m.Run()
	if fuzz := flag.Lookup("test.fuzz"); code == 0 && (fuzz == nil || fuzz.Value.String() == "") {
		if err := checkGoroutines(base); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// checkGoroutines fails the run if goroutines outlive the tests: every
// server, store and client was closed, so their goroutines must be gone.
func checkGoroutines(base int) error {
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			return fmt.Errorf("leaked goroutines: %d running, %d at start:\n%s", runtime.NumGoroutine(), base, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// childConfig is the configuration of the child relay.
func childConfig(path string) relay.Config {
	cfg := relay.DefaultConfig()
	cfg.PublicHost = testHost
	cfg.Store.Path = path
	cfg.Limits.PublishRate = 0
	cfg.Limits.DeliveryWait = time.Second // bob's acks must commit within it on a loaded machine
	if url := os.Getenv(childOfflineEnv); url != "" {
		off := relay.DefaultOfflineConfig()
		off.PublishURL = url
		off.RetryMin = 20 * time.Millisecond
		off.RetryMax = 100 * time.Millisecond
		off.PollInterval = 100 * time.Millisecond
		cfg.Offline = &off
	}
	return cfg
}

// runChild serves a relay with durable (synchronous=full) storage until it
// is killed, after printing its address.
func runChild(path string) error {
	return serveChild(childConfig(path), sqlitestore.Options{Synchronous: "full"})
}

// serveChild is the body of a child relay process on SQLite: it opens the
// store, prints "ADDR host:port" for the parent, and serves until killed.
func serveChild(cfg relay.Config, opts sqlitestore.Options) error {
	return serveChildOn(cfg, func(onCommit func(int, time.Duration)) (relay.Store, error) {
		opts.Logger = slog.New(slog.DiscardHandler)
		opts.OnCommit = onCommit
		return sqlitestore.Open(cfg.Store.Path, opts)
	})
}

// serveChildOn is serveChild on the store that open returns; open wires
// the store's commits to onCommit.
func serveChildOn(cfg relay.Config, open func(onCommit func(int, time.Duration)) (relay.Store, error)) error {
	var srvp atomic.Pointer[relay.Server]
	st, err := open(func(batch int, d time.Duration) {
		if s := srvp.Load(); s != nil { // the first sweep may commit while New runs
			s.ObserveCommit(batch, d)
		}
	})
	if err != nil {
		return err
	}
	srv, err := relay.New(cfg, st, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	srvp.Store(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("ADDR %s\n", ln.Addr())
	return http.Serve(ln, srv.Handler())
}

// startChild runs the test binary as a child relay and returns an env
// pointing at it (no server or store of its own) and the process.
func startChild(t *testing.T, path string) (*env, *exec.Cmd) {
	t.Helper()
	return startChildAs(t, childDBEnv, path, childConfig(path))
}

// startChildEnv is startChild with more environment variables for the
// child ("NAME=value").
func startChildEnv(t *testing.T, path string, vars ...string) (*env, *exec.Cmd) {
	t.Helper()
	return startChildAs(t, childDBEnv, path, childConfig(path), vars...)
}

// startChildAs runs the test binary as the child relay that envVar
// selects (see TestMain), whose configuration is cfg, with more
// environment variables for it ("NAME=value").
func startChildAs(t *testing.T, envVar, path string, cfg relay.Config, vars ...string) (*env, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), envVar+"="+path), vars...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("child relay did not start: %v", err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if !ok {
		t.Fatalf("child said %q", line)
	}
	return &env{t: t, cfg: cfg, url: "ws://" + addr + "/", http: "http://" + addr}, cmd
}

// TestCrashRestart kills a relay with SIGKILL while it works and reopens its
// database: every publish it had answered is there, every ack it had
// confirmed is kept.
func TestCrashRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.db")
	e, child := startChild(t, path)
	bob := newIdentity(t, 1)
	b := e.dial()
	b.auth2(bob, 0)
	pub := level2Publisher(t, e, 100)

	acked := make(map[string]bool)
	var unacked []string
	// Ten acked by bob (delivered: his ack had committed), ten not (queued).
	for i := range 20 {
		pub.publish(ciphertext(200, fmt.Sprint("crash ", i)), bob.ID(), "")
		d := b.expectDelivery()
		if i%2 == 0 {
			b.ack(d.ID)
			pub.expectResult(wire.StatusDelivered)
			acked[d.ID] = true
		} else {
			pub.expectResult(wire.StatusQueued)
			unacked = append(unacked, d.ID)
		}
	}
	// An anonymous subscriber acks the first five of bob's unacked ones.
	anon := e.dial()
	anon.subscribe1("anon", bob.Key())
	anonAcked := make(map[string]bool)
	for i := range 20 {
		d := anon.expectDelivery()
		if i < 5 {
			anon.ack(d.ID)
			anonAcked[d.ID] = true
		}
	}
	eventually(t, "anonymous acks committed", func() bool { return e.metric("courier_relay_messages_acked_total") >= 15 })

	// A pipelined burst, killed midway: what was answered must survive.
	b.ws.CloseNow()
	const burst = 300
	for i := range burst {
		pub.publish(ciphertext(200, fmt.Sprint("burst ", i)), bob.ID(), "")
	}
	var answered []string
	for range burst / 2 {
		answered = append(answered, pub.expectResult(wire.StatusQueued).ID)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()

	// Reopen: the lock died with the process.
	st, err := sqlitestore.Open(path, sqlitestore.Options{Synchronous: "normal", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	defer st.Close()
	re := newEnvOn(t, testConfig(t), st)

	b2 := re.dial()
	b2.auth(bob, bob.qm)
	replayed := make(map[string]bool)
	count := 0
	for {
		f := b2.next()
		if f.Kind == wire.KindDrained {
			if f.Drained.Count != count {
				t.Fatalf("Drained %d after %d", f.Drained.Count, count)
			}
			break
		}
		if f.Kind != wire.KindDelivery {
			t.Fatalf("frame %+v", f)
		}
		id := f.Delivery.ID
		if acked[id] {
			t.Fatalf("acked message %s replayed after the crash", id)
		}
		if replayed[id] {
			t.Fatalf("%s replayed twice", id)
		}
		replayed[id] = true
		count++
	}
	for _, id := range append(unacked, answered...) {
		if !replayed[id] {
			t.Fatalf("answered message %s lost in the crash", id)
		}
	}
	if count > len(unacked)+burst {
		t.Fatalf("%d replayed, at most %d stored", count, len(unacked)+burst)
	}
	a2 := re.dial()
	a2.subscribe1("anon", bob.Key())
	for range 20 - 5 {
		if d := a2.expectDelivery(); anonAcked[d.ID] {
			t.Fatalf("anonymous ack of %s lost in the crash", d.ID)
		}
	}
}
