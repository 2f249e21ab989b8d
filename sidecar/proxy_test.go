package sidecar_test

import (
	"bytes"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"courier/internal/dantetest"
	"courier/internal/testcert"
	"courier/relay"
	"courier/relay/sqlitestore"
	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// observedRelay is the real relay (relay.Server on a real SQLite file)
// behind an http.Server that records, for every request it gets (the
// WebSocket upgrade and the GET / of the description alike), the client
// address the relay sees. The relay logs with log.client_details on, to
// log.
type observedRelay struct {
	Addr string

	mu   sync.Mutex
	seen []seenRequest
	log  st.RecordHandler
}

type seenRequest struct {
	remoteHost string
	upgrade    bool
}

func startObservedRelay(t *testing.T, publicHost string) *observedRelay {
	t.Helper()
	cfg := relay.DefaultConfig()
	cfg.PublicHost = publicHost
	cfg.Store.Path = filepath.Join(t.TempDir(), "relay.db")
	cfg.Store.Synchronous = "normal"
	cfg.Limits.PublishRate = 0
	cfg.Log.ClientDetails = true
	r := &observedRelay{log: st.NewRecordHandler()}
	store, err := sqlitestore.Open(cfg.Store.Path, sqlitestore.Options{Quota: cfg.Limits.Quota(), Synchronous: cfg.Store.Synchronous, Logger: slog.New(r.log)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(cfg, store, slog.New(r.log))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.Addr = ln.Addr().String()
	h := srv.Handler()
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		host, _, _ := net.SplitHostPort(req.RemoteAddr)
		r.mu.Lock()
		r.seen = append(r.seen, seenRequest{remoteHost: host, upgrade: strings.EqualFold(req.Header.Get("Upgrade"), "websocket")})
		r.mu.Unlock()
		h.ServeHTTP(w, req)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() {
		hs.Close()
		if err := srv.Close(); err != nil {
			t.Errorf("relay close: %v", err)
		}
		if err := store.Close(); err != nil {
			t.Errorf("relay store close: %v", err)
		}
	})
	return r
}

// port is the relay's port, for a relay_url under another host name.
func (r *observedRelay) port() string {
	_, p, _ := net.SplitHostPort(r.Addr)
	return p
}

// requests returns the requests seen so far.
func (r *observedRelay) requests() []seenRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seenRequest(nil), r.seen...)
}

// upgradesFrom counts the WebSocket upgrades seen from host.
func (r *observedRelay) upgradesFrom(host string) int {
	n := 0
	for _, s := range r.requests() {
		if s.upgrade && s.remoteHost == host {
			n++
		}
	}
	return n
}

// The relay's host name is one only the SOCKS5 proxy (Dante, with a hosts
// file of its own) can resolve: a name under .invalid, which no resolver
// here knows. Two sidecars with relay_proxy (one socks5://, one
// socks5h://: both leave the name to the proxy) connect, authenticate to
// the relay under that name and deliver a message end to end, which they
// could not do had they looked the name up themselves. The relay sees
// every request (upgrades and the GET / of its description) from the
// proxy's outgoing address 127.0.0.2, never from 127.0.0.1, the sidecars'
// own, and logs only that address. A sidecar with the same config but no
// relay_proxy cannot even find the relay, and hands its message OFFLINE.
func TestRelayThroughSOCKS5Proxy(t *testing.T) {
	const relayHost = "relay.courier-test.invalid"
	if _, err := net.LookupHost(relayHost); err == nil {
		t.Fatalf("%s resolves here: the test needs a name the local resolver cannot resolve", relayHost)
	}
	r := startObservedRelay(t, relayHost)
	proxy := dantetest.Start(t, dantetest.Options{External: "127.0.0.2", Hosts: map[string]string{relayHost: "127.0.0.1"}})
	relayURL := "ws://" + relayHost + ":" + r.port() + "/"

	var sides []*st.Sidecar
	for _, c := range []struct{ name, scheme string }{{"A", "socks5"}, {"B", "socks5h"}} {
		n := st.NewNode(t, c.name)
		cfg := st.Config(n, relayURL, t.TempDir())
		cfg.AllowInsecure = true // ws:// to a name that is not loopback
		cfg.RelayProxy = proxy.URL(c.scheme, "")
		s := st.StartSidecar(t, n, cfg, st.Options())
		got := s.WaitRelay(sidecar.RelayConnected)
		if want := c.scheme + "://" + proxy.Addr; got.Proxy != want {
			t.Errorf("%s: status proxy = %q, want %q", c.name, got.Proxy, want)
		}
		sides = append(sides, s)
	}
	a, b := sides[0], sides[1]
	ct := st.Ciphertext("through socks", 1, 500)
	id := a.Submit(b.Node, ct)
	if m := a.WaitMessage(id, queue.Delivered); m.Path != queue.PathIndirect {
		t.Errorf("delivered by %q, want INDIRECT", m.Path)
	}
	if got := waitInbound(t, b.Node, id); !bytes.Equal(got.Ciphertext, ct) {
		t.Error("ciphertext changed on the way")
	}

	// What the relay saw: the proxy's address only, for the WebSocket and
	// for the description alike.
	var upgrades, others int
	for _, s := range r.requests() {
		if s.remoteHost != "127.0.0.2" {
			t.Errorf("the relay saw a request from %s (upgrade %v), not from the proxy's 127.0.0.2", s.remoteHost, s.upgrade)
		}
		if s.upgrade {
			upgrades++
		} else {
			others++
		}
	}
	if upgrades < 2 || others < 2 {
		t.Errorf("the relay saw %d upgrades and %d other requests, want at least 2 of each (a WebSocket and a GET / per sidecar)", upgrades, others)
	}
	connected := r.log.Lines("connected", "remote=")
	if len(connected) < 2 {
		t.Errorf("the relay logged %d connections with their address, want 2: %q", len(connected), connected)
	}
	for _, l := range connected {
		if !strings.Contains(l, "remote=127.0.0.2:") {
			t.Errorf("the relay logged a connection not from the proxy: %s", l)
		}
	}

	// The same, without the proxy: the name does not resolve here.
	n := st.NewNode(t, "C")
	cfg := st.Config(n, relayURL, t.TempDir())
	cfg.AllowInsecure = true
	c := st.StartSidecar(t, n, cfg, st.Options())
	var last sidecar.RelayStatus
	st.Eventually(t, "C's status to say the relay's name does not resolve", func() bool {
		last = c.E.RelayStatus()
		return strings.Contains(last.LastError, relayHost) && strings.Contains(last.LastError, "lookup")
	})
	if last.State == sidecar.RelayConnected || last.Proxy != "" {
		t.Errorf("C without a proxy: status %+v", last)
	}
	id = c.Submit(a.Node, st.Ciphertext("no proxy", 1, 100))
	if m := c.WaitMessage(id, queue.HandedOff); m.Path != queue.PathOffline {
		t.Errorf("C's message went %q, want OFFLINE", m.Path)
	}
}

// relay_proxy applies live, like the other relay keys: added, the sidecar
// reconnects through the proxy; the proxy gone, the status says so, the
// sidecar keeps retrying and messages go OFFLINE after relay_grace, as
// with a relay down; the proxy back on its port, the sidecar reconnects by
// itself; the key deleted, it connects directly again.
func TestRelayProxyLiveAndDown(t *testing.T) {
	r := startObservedRelay(t, "127.0.0.1")
	relayURL := "ws://" + r.Addr + "/"
	a := startProxySidecar(t, "A", relayURL, "")
	b := startProxySidecar(t, "B", relayURL, "")
	st.Eventually(t, "two direct connections", func() bool { return r.upgradesFrom("127.0.0.1") == 2 })

	proxy := dantetest.Start(t, dantetest.Options{External: "127.0.0.2"})
	cfg := a.E.Config()
	cfg.RelayProxy = proxy.URL("socks5h", "")
	if err := a.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	st.Eventually(t, "A to reconnect through the proxy", func() bool {
		s := a.E.RelayStatus()
		return r.upgradesFrom("127.0.0.2") == 1 && s.State == sidecar.RelayConnected && s.Proxy == "socks5h://"+proxy.Addr
	})
	id := a.Submit(b.Node, st.Ciphertext("via proxy", 1, 100))
	if m := a.WaitMessage(id, queue.Delivered); m.Path != queue.PathIndirect {
		t.Errorf("delivered by %q, want INDIRECT", m.Path)
	}

	// The proxy goes away.
	proxy.Stop()
	var last sidecar.RelayStatus
	st.Eventually(t, "A's status to name the proxy it cannot reach", func() bool {
		last = a.E.RelayStatus()
		return last.State != sidecar.RelayConnected && strings.Contains(last.LastError, "SOCKS5 proxy "+proxy.Addr) &&
			strings.Contains(last.LastError, "refused")
	})
	id = a.Submit(b.Node, st.Ciphertext("proxy down", 1, 100))
	if m := a.WaitMessage(id, queue.HandedOff); m.Path != queue.PathOffline {
		t.Errorf("with the proxy down, a message went %q, want OFFLINE", m.Path)
	}

	// Back on the same port: A reconnects by itself.
	port, _ := strconv.Atoi(proxy.Addr[strings.LastIndexByte(proxy.Addr, ':')+1:])
	dantetest.Start(t, dantetest.Options{External: "127.0.0.2", Port: port})
	st.Eventually(t, "A to reconnect through the proxy once it is back", func() bool {
		return r.upgradesFrom("127.0.0.2") == 2 && a.E.RelayStatus().State == sidecar.RelayConnected
	})
	id = a.Submit(b.Node, st.Ciphertext("proxy back", 1, 100))
	if m := a.WaitMessage(id, queue.Delivered); m.Path != queue.PathIndirect {
		t.Errorf("after the proxy came back, delivered by %q, want INDIRECT", m.Path)
	}

	// relay_proxy deleted: direct again.
	cfg.RelayProxy = ""
	if err := a.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	st.Eventually(t, "A to connect directly again", func() bool {
		s := a.E.RelayStatus()
		return r.upgradesFrom("127.0.0.1") == 3 && s.State == sidecar.RelayConnected && s.Proxy == ""
	})
}

// A proxy that refuses the sidecar (wrong username and password, or none
// where it wants them): the relay is never reached, the node is never
// asked to sign, the status says why without the password, nothing logs
// the password, and messages go OFFLINE after relay_grace.
func TestRelayProxyRefuses(t *testing.T) {
	const password = "pw-5f0c93a1e2"
	r := startObservedRelay(t, "127.0.0.1")
	proxy := dantetest.Start(t, dantetest.Options{Username: true})
	for _, c := range []struct {
		name, userinfo, want string
	}{
		{"wrong password", "courier:" + password + "@", "authentication failed"},
		{"no credentials", "", "no acceptable authentication methods"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := st.NewNode(t, "A")
			cfg := st.Config(n, "ws://"+r.Addr+"/", t.TempDir())
			cfg.RelayProxy = proxy.URL("socks5h", c.userinfo)
			logs := st.NewRecordHandler()
			s := st.StartSidecarLogging(t, n, cfg, st.Options(), slog.New(logs))
			var last sidecar.RelayStatus
			st.Eventually(t, "the status to say the proxy refused", func() bool {
				last = s.E.RelayStatus()
				return strings.Contains(last.LastError, c.want)
			})
			if !strings.Contains(last.LastError, "SOCKS5 proxy "+proxy.Addr) {
				t.Errorf("the error does not name the proxy: %s", last.LastError)
			}
			if want := "socks5h://" + proxy.Addr; last.Proxy != want {
				t.Errorf("status proxy = %q, want %q", last.Proxy, want)
			}
			id := s.Submit(n, st.Ciphertext("refused "+c.name, 1, 100))
			if m := s.WaitMessage(id, queue.HandedOff); m.Path != queue.PathOffline {
				t.Errorf("went %q, want OFFLINE", m.Path)
			}
			if len(n.Sign.Requests()) != 0 {
				t.Errorf("the node was asked to sign %d times though the relay was never reached", len(n.Sign.Requests()))
			}
			if len(logs.Lines("proxy")) == 0 && len(logs.Lines("SOCKS5")) == 0 {
				t.Errorf("no log line names the proxy")
			}
			if l := logs.Lines(password); len(l) > 0 || strings.Contains(last.LastError, password) {
				t.Errorf("the proxy password was logged or shown: %q / %s", l, last.LastError)
			}
		})
	}
	if got := r.requests(); len(got) != 0 {
		t.Errorf("the relay was reached %d times through a proxy that refused", len(got))
	}
}

func startProxySidecar(t *testing.T, name, relayURL, proxy string) *st.Sidecar {
	t.Helper()
	n := st.NewNode(t, name)
	cfg := st.Config(n, relayURL, t.TempDir())
	cfg.RelayProxy = proxy
	s := st.StartSidecar(t, n, cfg, st.Options())
	s.WaitRelay(sidecar.RelayConnected)
	return s
}

// wss:// through the proxy: TLS runs end to end over the proxied
// connection, the relay's certificate checked against relay_ca_file.
func TestRelayOverTLSThroughSOCKS5Proxy(t *testing.T) {
	ca := testcert.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca.WriteLeaf(t, 1, certFile, keyFile)
	proxy := dantetest.Start(t, dantetest.Options{External: "127.0.0.2"})
	p := startPair(t, func(c *relay.Config) {
		c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile
	}, func(c *sidecar.Config) {
		c.RelayCAFile = ca.CAFile
		c.RelayProxy = proxy.URL("socks5h", "")
	})
	if !strings.HasPrefix(p.cfgA.RelayURL, "wss://") {
		t.Fatalf("relay_url %q is not wss://", p.cfgA.RelayURL)
	}
	ct := st.Ciphertext("TLS through socks", 1, 300)
	id := p.a.Submit(p.b.Node, ct)
	if m := p.a.WaitMessage(id, queue.Delivered); m.Path != queue.PathIndirect {
		t.Errorf("delivered by %q, want INDIRECT", m.Path)
	}
	if got := waitInbound(t, p.b.Node, id); !bytes.Equal(got.Ciphertext, ct) {
		t.Error("ciphertext changed")
	}
	if !strings.Contains(proxy.Log(), "127.0.0.2") {
		t.Errorf("Dante logged no connection from its external address:\n%s", proxy.Log())
	}
}
