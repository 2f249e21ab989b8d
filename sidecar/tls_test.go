package sidecar_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"courier/internal/testcert"
	"courier/relay"
	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// Two sidecars reach a relay serving wss:// with a certificate of the
// test's own CA, named in relay_ca_file, and a message goes INDIRECT; a
// sidecar without relay_ca_file refuses the relay's certificate, and its
// status says so.
func TestRelayOverTLSWithRelayCAFile(t *testing.T) {
	ca := testcert.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca.WriteLeaf(t, 1, certFile, keyFile)
	p := startPair(t, func(c *relay.Config) {
		c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile
	}, func(c *sidecar.Config) {
		c.RelayCAFile = ca.CAFile
	})
	if !strings.HasPrefix(p.cfgA.RelayURL, "wss://127.0.0.1:") {
		t.Fatalf("relay_url %q is not wss://", p.cfgA.RelayURL)
	}
	ct := st.Ciphertext("over TLS", 1, 300)
	id := p.a.Submit(p.b.Node, ct)
	if m := p.a.WaitMessage(id, queue.Delivered); m.Path != queue.PathIndirect {
		t.Errorf("delivered by %q, want INDIRECT", m.Path)
	}
	if got := waitInbound(t, p.b.Node, id); !bytes.Equal(got.Ciphertext, ct) {
		t.Error("ciphertext changed")
	}

	// Without relay_ca_file: the system roots do not know the test's CA.
	n := st.NewNode(t, "C")
	cfg := st.Config(n, p.relay.URL(), t.TempDir())
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	c := st.StartSidecar(t, n, cfg, st.Options())
	var last sidecar.RelayStatus
	st.Eventually(t, "a certificate error in C's relay status", func() bool {
		last = c.E.RelayStatus()
		return strings.Contains(last.LastError, "certificate")
	})
	if last.State == sidecar.RelayConnected || last.PeerID != "" {
		t.Errorf("C's status = %+v: connected to a relay it cannot verify", last)
	}
	if len(n.Sign.Requests()) != 0 {
		t.Errorf("C's node was asked to sign %d times for an unverified relay", len(n.Sign.Requests()))
	}

	// A relay_ca_file of another CA is refused the same way.
	other := testcert.NewCA(t)
	n2 := st.NewNode(t, "D")
	cfg2 := st.Config(n2, p.relay.URL(), t.TempDir())
	cfg2.RelayCAFile = other.CAFile
	d := st.StartSidecar(t, n2, cfg2, st.Options())
	st.Eventually(t, "a certificate error in D's relay status", func() bool {
		return strings.Contains(d.E.RelayStatus().LastError, "certificate")
	})
}

func TestRelayTLSConfigValidation(t *testing.T) {
	n := st.NewNode(t, "A")
	base := st.Config(n, "ws://127.0.0.1:1/", t.TempDir())
	garbage := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		mutate func(*sidecar.Config)
		want   string // "" valid
	}{
		{"ws loopback", func(c *sidecar.Config) {}, ""},
		{"ws localhost", func(c *sidecar.Config) { c.RelayURL = "ws://localhost:8080/" }, ""},
		{"ws ipv6 loopback", func(c *sidecar.Config) { c.RelayURL = "ws://[::1]:8080/" }, ""},
		{"wss remote", func(c *sidecar.Config) { c.RelayURL = "wss://relay.example.org/" }, ""},
		{"ws remote", func(c *sidecar.Config) { c.RelayURL = "ws://relay.example.org/" }, "relay_url: \"ws://relay.example.org/\" is ws://"},
		{"ws remote IP", func(c *sidecar.Config) { c.RelayURL = "ws://192.0.2.1:8080/" }, "allow_insecure = true"},
		{"ws remote allowed", func(c *sidecar.Config) { c.RelayURL = "ws://relay.example.org/"; c.AllowInsecure = true }, ""},
		{"ca file missing", func(c *sidecar.Config) { c.RelayCAFile = "/nonexistent/ca.pem" }, "relay_ca_file: cannot read"},
		{"ca file not PEM", func(c *sidecar.Config) { c.RelayCAFile = garbage }, "relay_ca_file: " + garbage + " holds no PEM certificate"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			c.mutate(&cfg)
			err := cfg.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("Validate = %v, want %q", err, c.want)
			}
		})
	}
	// From TOML, with a relative relay_ca_file resolved against the file.
	dir := t.TempDir()
	ca := testcert.NewCA(t)
	if err := os.WriteFile(filepath.Join(dir, "relay-ca.pem"), ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	toml := "relay_url = \"wss://relay.example.org/\"\nrelay_ca_file = \"relay-ca.pem\"\n[node]\noffline_publish_url = \"http://127.0.0.1:4002/o\"\nsign_url = \"http://127.0.0.1:4002/s\"\n"
	path := filepath.Join(dir, "courier.toml")
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := sidecar.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RelayCAFile != filepath.Join(dir, "relay-ca.pem") {
		t.Errorf("relay_ca_file = %q", cfg.RelayCAFile)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// A relay_ca_file that disappears after the config was checked does not
// fall back to the system roots: the relay is not dialled and the status
// names relay_ca_file.
func TestRelayCAFileGoneIsReported(t *testing.T) {
	ca := testcert.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca.WriteLeaf(t, 1, certFile, keyFile)
	r := st.StartRelay(t, func(c *relay.Config) { c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile }, nil)
	caCopy := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caCopy, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	n := st.NewNode(t, "A")
	cfg := st.Config(n, r.URL(), t.TempDir())
	cfg.RelayCAFile = caCopy
	e, err := sidecar.New(cfg, st.Logger(), st.Options())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := os.Remove(caCopy); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	st.Eventually(t, "relay_ca_file in the relay status", func() bool {
		s := e.RelayStatus()
		return s.State == sidecar.RelayDisconnected && strings.Contains(s.LastError, "relay_ca_file")
	})
	if len(n.Sign.Requests()) != 0 {
		t.Error("the node was asked to sign although the relay could not be verified")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestRelayCAFileGoneAtStart: relay_ca_file was there when the
// configuration was checked and is gone when the relay client starts. The
// sidecar does not fall back to the system roots; its status says why,
// and messages go OFFLINE once relay_grace has passed, as with a relay
// that is down, instead of waiting for ever.
func TestRelayCAFileGoneAtStart(t *testing.T) {
	ca := testcert.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca.WriteLeaf(t, 1, certFile, keyFile)
	r := st.StartRelay(t, func(c *relay.Config) { c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile }, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	caFile := filepath.Join(t.TempDir(), "relay-ca.pem")
	pem, err := os.ReadFile(ca.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := st.Config(a, r.URL(), t.TempDir())
	cfg.RelayCAFile = caFile
	cfg.Delivery.RelayGrace = 300 * time.Millisecond
	sa := st.StartSidecarAfter(t, a, cfg, st.Options(), func() {
		if err := os.Remove(caFile); err != nil {
			t.Fatal(err)
		}
	})
	st.Eventually(t, "relay_ca_file's error in the relay status", func() bool {
		return strings.Contains(sa.E.RelayStatus().LastError, "relay_ca_file")
	})
	id := sa.Submit(b, st.Ciphertext("ca file gone", 1, 100))
	if m := sa.WaitMessage(id, queue.HandedOff); m.Path != queue.PathOffline {
		t.Errorf("path %q, want OFFLINE", m.Path)
	}
	if len(a.Sign.Requests()) != 0 {
		t.Errorf("the node was asked to sign %d times without a CA to check the relay", len(a.Sign.Requests()))
	}
}
