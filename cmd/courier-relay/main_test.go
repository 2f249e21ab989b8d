package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/internal/syncbuf"
	"courier/relay"
	"courier/relay/sqlitestore"
	"courier/wire"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "courier-relay.toml")
	body = strings.ReplaceAll(body, "$DIR", dir)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const testConfig = `
listen = "127.0.0.1:1"   # overridden by -listen
public_host = "relay.test"
log_level = "debug"
drain_delay = "0s"
[store]
path = "$DIR/relay.db"
`

var addrRE = regexp.MustCompile(`"courier-relay listening" addr=(\S+)`)

func TestRunServesAndShutsDownGracefully(t *testing.T) {
	cfg := writeConfig(t, testConfig)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-config", cfg, "-listen", "127.0.0.1:0"}, &stdout, &stderr) }()

	var addr string
	deadline := time.Now().Add(10 * time.Second)
	for addr == "" {
		if m := addrRE.FindStringSubmatch(stderr.String()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no listening line; stderr:\n%s", stderr.String())
		} else {
			time.Sleep(5 * time.Millisecond)
		}
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"name":"courier-relay"`) || !strings.Contains(string(body), `"version":"dev"`) {
		t.Errorf("GET / = %s", body)
	}

	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	ws, _, err := websocket.Dial(wctx, "ws://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	key := wire.PeerIDFromPublicKey(make([]byte, 36)).SubscriptionKey(wire.RelayPrefixBits)
	if err := ws.Write(wctx, websocket.MessageText, wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{UserID: "u", SubscriptionKey: key})); err != nil {
		t.Fatal(err)
	}
	if _, b, err := ws.Read(wctx); err != nil || string(b) != string(wire.SubscribeOK) {
		t.Fatalf("subscribe: %s %v", b, err)
	}

	cancel() // SIGTERM
	if _, _, err := ws.Read(wctx); websocket.CloseStatus(err) != wire.CloseServiceRestart {
		t.Errorf("client closed with %v, want 1012", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return after the signal")
	}
	if !strings.Contains(stderr.String(), "courier-relay stopped") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
}

func TestSecondInstanceOnTheSameDatabaseRefuses(t *testing.T) {
	cfg := writeConfig(t, testConfig)
	var out syncbuf.Buffer
	first := NewMain(&out)
	if err := first.ParseFlags([]string{"-config", cfg, "-listen", "127.0.0.1:0"}, &out); err != nil {
		t.Fatal(err)
	}
	if err := first.Open(); err != nil {
		t.Fatal(err)
	}
	defer first.Close(context.Background())

	second := NewMain(&out)
	if err := second.ParseFlags([]string{"-config", cfg, "-listen", "127.0.0.1:0"}, &out); err != nil {
		t.Fatal(err)
	}
	err := second.Open()
	if !errors.Is(err, sqlitestore.ErrLocked) || !strings.Contains(err.Error(), "in use by another courier-relay") {
		t.Fatalf("second Open = %v, want a clear ErrLocked", err)
	}
	// And through run, as an operator sees it.
	err = run(context.Background(), []string{"-config", cfg, "-listen", "127.0.0.1:0"}, &out, &out)
	if !errors.Is(err, sqlitestore.ErrLocked) {
		t.Fatalf("run = %v", err)
	}
	// The first one still serves.
	resp, err := http.Get("http://" + first.Addr().String() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first instance: %v", err)
	}
	resp.Body.Close()
}

func TestBindErrorIsReportedAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := writeConfig(t, testConfig)
	var out syncbuf.Buffer
	err = run(context.Background(), []string{"-config", cfg, "-listen", ln.Addr().String()}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("run on a taken address = %v", err)
	}
	// The store was released: another instance can open it.
	m := NewMain(&out)
	if err := m.ParseFlags([]string{"-config", cfg, "-listen", "127.0.0.1:0"}, &out); err != nil {
		t.Fatal(err)
	}
	if err := m.Open(); err != nil {
		t.Fatalf("open after a failed start: %v", err)
	}
	m.Close(context.Background())
}

func TestFlags(t *testing.T) {
	var out syncbuf.Buffer
	t.Run("defaults without a config file", func(t *testing.T) {
		m := NewMain(&out)
		if err := m.ParseFlags(nil, &out); err != nil {
			t.Fatal(err)
		}
		want := relay.DefaultConfig()
		want.Version = version
		if m.Config.Client == nil {
			t.Error("the browser client is not served at /client/")
		}
		want.Client = m.Config.Client
		if fmt.Sprint(m.Config) != fmt.Sprint(want) {
			t.Errorf("config %+v", m.Config)
		}
	})
	t.Run("listen overrides the file", func(t *testing.T) {
		m := NewMain(&out)
		if err := m.ParseFlags([]string{"-config", writeConfig(t, testConfig), "-listen", "127.0.0.1:9999"}, &out); err != nil {
			t.Fatal(err)
		}
		if m.Config.Listen != "127.0.0.1:9999" || m.Config.PublicHost != "relay.test" {
			t.Errorf("config %+v", m.Config)
		}
	})
	t.Run("version", func(t *testing.T) {
		var stdout bytes.Buffer
		if err := run(context.Background(), []string{"-version"}, &stdout, &out); err != nil {
			t.Fatal(err)
		}
		if got := stdout.String(); got != "courier-relay dev\n" {
			t.Errorf("-version printed %q", got)
		}
	})
	for _, tt := range []struct{ name, body, want string }{
		{"unknown key", "[limits]\nmax_conections = 5", "limits.max_conections"},
		{"bad value", "[keepalive]\nping_interval = \"-1s\"", "keepalive.ping_interval"},
		{"redis without a server", "[store]\ndriver = \"redis\"", "store.url"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Were the config wrongly accepted, the relay would serve: on a
			// free port, with its database in a temporary directory, and
			// only until the deadline, so the test fails fast.
			t.Chdir(t.TempDir())
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			err := run(ctx, []string{"-config", writeConfig(t, tt.body), "-listen", "127.0.0.1:0"}, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run = %v, want an error naming %q", err, tt.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		err := run(context.Background(), []string{"-config", filepath.Join(t.TempDir(), "nope.toml")}, &out, &out)
		if err == nil || !strings.Contains(err.Error(), "nope.toml") {
			t.Errorf("run = %v", err)
		}
	})
	t.Run("stray argument", func(t *testing.T) {
		if err := run(context.Background(), []string{"serve"}, &out, &out); err == nil {
			t.Error("accepted a positional argument")
		}
	})
}

// mainChildEnv makes the test binary run main() itself, with the
// arguments it holds (separated by newlines): see TestSIGTERMExitsZero.
const mainChildEnv = "COURIER_RELAY_MAIN_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(mainChildEnv); args != "" {
		os.Args = append([]string{"courier-relay"}, strings.Split(args, "\n")...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestSIGTERMExitsZero(t *testing.T) {
	cfg := writeConfig(t, testConfig)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), mainChildEnv+"=-config\n"+cfg+"\n-listen\n127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && sc.Scan() {
		if m := addrRE.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatal("no listening line")
	}
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v", err)
	}
	resp.Body.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, stderr)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestSIGTERMDrains: on SIGTERM the relay first answers /readyz 503 while
// it still serves (its clients stay connected) for drain_delay, then
// closes its clients with 1012 and exits 0.
func TestSIGTERMDrains(t *testing.T) {
	cfg := writeConfig(t, strings.Replace(testConfig, `drain_delay = "0s"`, `drain_delay = "3s"`, 1))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), mainChildEnv+"=-config\n"+cfg+"\n-listen\n127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && sc.Scan() {
		if m := addrRE.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatal("no listening line")
	}
	go io.Copy(io.Discard, stderr)
	readyz := func() int {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := readyz(); code != 200 {
		t.Fatalf("readyz before SIGTERM: %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{UserID: "u", SubscriptionKey: wire.PeerIDFromPublicKey(make([]byte, 36)).SubscriptionKey(wire.RelayPrefixBits)})); err != nil {
		t.Fatal(err)
	}
	if _, b, err := ws.Read(ctx); err != nil || string(b) != string(wire.SubscribeOK) {
		t.Fatalf("subscribe: %s, %v", b, err)
	}
	closed := make(chan error, 1)
	go func() {
		_, _, err := ws.Read(ctx)
		closed <- err
	}()

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for readyz() != 503 {
		if time.Now().After(deadline) {
			t.Fatal("readyz never answered 503 after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Still serving: a new client is accepted while draining.
	ws2, _, err := websocket.Dial(ctx, "ws://"+addr+"/", nil)
	if err != nil {
		t.Fatalf("dial while draining: %v", err)
	}
	ws2.CloseNow()
	err = <-closed
	if websocket.CloseStatus(err) != wire.CloseServiceRestart {
		t.Fatalf("client closed with %v, want 1012", err)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("clients closed %v after SIGTERM, want after the 3s drain delay", d)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}
