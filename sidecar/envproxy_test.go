package sidecar_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"courier/sidecar"
	st "courier/sidecar/sidecartest"
)

const envProxyChildEnv = "COURIER_SIDECAR_ENVPROXY_CHILD"

// Proxy variables in the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY)
// apply neither to the calls to the node (its API, credentials, sign
// requests and messages stay on the way to the node: the node is this
// machine's or its network's, never something to reach through a proxy)
// nor, with relay_proxy set, to the relay (relay_proxy alone applies).
// net/http reads those variables once per process, so a child process
// runs the sidecar with them set to a recording HTTP proxy; the node and
// the relay are under .invalid names, which only a proxy could reach.
// Before, the node's calls went to the environment's proxy whenever the
// node was not on loopback.
func TestEnvironmentProxiesIgnored(t *testing.T) {
	var seen atomic.Int32
	rec := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		t.Logf("the environment's proxy got %s %s", r.Method, r.URL)
		http.Error(w, "recording proxy", http.StatusBadGateway)
	}))
	t.Cleanup(rec.Close)
	cmd := exec.Command(os.Args[0], "-test.run=^TestEnvironmentProxiesIgnoredChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), envProxyChildEnv+"="+t.TempDir(),
		"HTTP_PROXY="+rec.URL, "HTTPS_PROXY="+rec.URL, "ALL_PROXY="+rec.URL,
		"http_proxy="+rec.URL, "https_proxy="+rec.URL, "all_proxy="+rec.URL, "NO_PROXY=", "no_proxy=")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestEnvironmentProxiesIgnoredChild") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if n := seen.Load(); n != 0 {
		t.Errorf("the environment's proxy got %d requests, want none", n)
	}
}

func TestEnvironmentProxiesIgnoredChild(t *testing.T) {
	dir := os.Getenv(envProxyChildEnv)
	if dir == "" {
		t.Skip("run by TestEnvironmentProxiesIgnored")
	}
	cfg := sidecar.DefaultConfig()
	cfg.RelayURL = "wss://relay.invalid/"
	cfg.RelayProxy = "socks5h://127.0.0.1:1" // nothing listens: the relay stays unreachable
	cfg.API.Listen = "127.0.0.1:0"
	cfg.Node = sidecar.NodeConfig{
		OfflinePublishURL: "http://node.invalid:4002/courier/offline",
		SignURL:           "http://node.invalid:4002/ob/signmessage",
	}
	cfg.Store.Path, cfg.Store.Synchronous = filepath.Join(dir, "courier.db"), "normal"
	cfg.Delivery.RelayGrace = 100 * time.Millisecond
	cfg.Delivery.RetryWaitMin, cfg.Delivery.RetryWaitMax = 20*time.Millisecond, 100*time.Millisecond
	e, err := sidecar.New(cfg, st.Logger(), st.Options())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		e.Close()
	}()
	m, _, err := e.Submit(ctx, st.NewNode(t, "B").Peer.String(), []byte("through no proxy"))
	if err != nil {
		t.Fatal(err)
	}
	// The message goes OFFLINE once the relay is down past the grace, and
	// its hand-off to the node fails: node.invalid is not found here.
	st.Eventually(t, "an OFFLINE attempt and a relay attempt", func() bool {
		got, err := e.Message(ctx, m.ID)
		rs := e.RelayStatus()
		return err == nil && got.Attempts > 0 && strings.Contains(got.LastError, "node.invalid") && rs.LastError != ""
	})
	got, _ := e.Message(ctx, m.ID)
	t.Logf("message: %s; relay: %s", got.LastError, e.RelayStatus().LastError)
}
