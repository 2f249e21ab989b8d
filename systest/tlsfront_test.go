package systest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
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

	"courier/internal/cluster"
	"courier/internal/testcert"
)

var (
	tlsBindRE  = regexp.MustCompile(`(?m)^    bind :443 ssl crt \S+ alpn http/1\.1$`)
	httpBindRE = regexp.MustCompile(`(?m)^    bind :80$`)
	serversRE  = regexp.MustCompile(`(?m)^    server relay\d 127\.0\.0\.1:\d+$`)
)

// deploy/haproxy-tls.cfg as shipped, with only its addresses and the
// certificate's path rewritten for the test: HAProxy terminates TLS with
// a certificate of the test's own CA, the relay behind it speaks plain
// ws://, and two courier sidecars reach it at wss:// with relay_ca_file
// and deliver a message both ways, INDIRECT. Plain http:// at the front
// is redirected to https://; a sidecar without relay_ca_file refuses the
// front's certificate.
func TestHAProxyTerminatesTLS(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy is not installed (apt-get install haproxy); skipping the TLS front test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	dir := t.TempDir()
	c := cluster.New(dir, bins)
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	// Plain ws:// behind the front; no drain on stop (nothing to drain
	// from at the end of the test).
	// The front names the client in X-Forwarded-For; the relay believes
	// it from the front only, and limits each client address to 2
	// connections.
	relay, err := c.StartRelayConfig(ctx, "relay", fmt.Sprintf("public_host = \"127.0.0.1\"\ndrain_delay = \"0s\"\ntrusted_proxies = [\"127.0.0.1\"]\n\n[store]\npath = %q\n\n%smax_connections_per_ip = 2\n",
		filepath.Join(dir, "relay.db"), relayLimits))
	if err != nil {
		t.Fatal(err)
	}

	// The front's certificate: chain, then key, in one PEM file.
	ca := testcert.NewCA(t)
	certPEM, keyPEM := ca.Leaf(t, 1)
	pem := filepath.Join(dir, "front.pem")
	testcert.WriteFile(t, pem, append(append([]byte{}, certPEM...), keyPEM...))

	root, err := cluster.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "haproxy-tls.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	tlsAddr, httpAddr := freeAddr(t), freeAddr(t)
	text := string(raw)
	if len(tlsBindRE.FindAllString(text, -1)) != 1 || len(httpBindRE.FindAllString(text, -1)) != 1 || len(serversRE.FindAllString(text, -1)) == 0 {
		t.Fatal("deploy/haproxy-tls.cfg: want one \"bind :443 ssl crt … alpn http/1.1\", one \"bind :80\" and server lines")
	}
	text = tlsBindRE.ReplaceAllString(text, "    bind "+tlsAddr+" ssl crt "+pem+" alpn http/1.1")
	text = httpBindRE.ReplaceAllString(text, "    bind "+httpAddr)
	text = serversRE.ReplaceAllStringFunc(text, func(s string) string {
		return s[:strings.LastIndexByte(s, ' ')+1] + relay.Addr()
	})
	// The test machine's descriptor limit is lower than a production front's.
	text = strings.Replace(text, "    maxconn 60000\n", "    maxconn 2000\n", 1)
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-db", "-f", cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", out.String())
			t.Logf("relay log:\n%s", relay.Tail(40))
		}
	})
	// The programs stop before HAProxy (cleanups run last first), so that
	// the sidecars close their connections through it cleanly instead of
	// waiting out a dead front. Close again later does nothing.
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})

	// http:// at the front: a redirect to https://, nothing served.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	err = cluster.WaitFor(ctx, "the front's redirect to https", func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/", nil)
		resp, err := noFollow.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusMovedPermanently || !strings.HasPrefix(loc, "https://") {
			return false, fmt.Errorf("GET http:// answered %d, Location %q", resp.StatusCode, loc)
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// https:// at the front: the relay's description, over TLS 1.2 or later.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	resp, err := hc.Get("https://" + tlsAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("GET https:// through the front: %d, TLS %+v", resp.StatusCode, resp.TLS)
	}

	w := &world{t: t, ctx: ctx, c: c, relay: relay, cancel: cancel}
	relayURL := "wss://" + tlsAddr + "/"
	top := fmt.Sprintf("relay_ca_file = %q", ca.CAFile)
	for i, name := range []string{"A", "B"} {
		n, err := c.StartDevNode(ctx, "node"+name)
		if err != nil {
			t.Fatal(err)
		}
		s, err := c.StartSidecar(ctx, "sidecar"+name, cluster.SidecarConfig{RelayURL: relayURL, Node: n, Top: top, Extra: sidecarDelivery})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			w.nodeA, w.sideA = n, s
		} else {
			w.nodeB, w.sideB = n, s
		}
		w.waitConnected(s)
	}
	for _, d := range []struct {
		from, to *cluster.DevNode
		side     *cluster.Sidecar
	}{{w.nodeA, w.nodeB, w.sideA}, {w.nodeB, w.nodeA, w.sideB}} {
		text := "through the TLS front, from " + d.from.Name
		id := w.send(d.from, d.to, text)
		if m := w.waitFinal(d.side, []string{id})[id]; m.State != "delivered" || m.Path != "INDIRECT" {
			t.Errorf("%s: %s %s (%s), want delivered INDIRECT", d.from.Name, m.State, m.Path, m.LastError)
		}
		if got := w.waitReceived(d.to, []string{id})[id]; got.Text != text {
			t.Errorf("%s received %+v", d.to.Name, got)
		}
		w.checkExactlyOnce(d.to, []string{id})
	}

	// The per-address limit counts the client the front names: sidecars A
	// and B fill 127.0.0.1's two slots, yet clients from 127.0.0.5 and
	// 127.0.0.6 get theirs, and a third connection from 127.0.0.5 is
	// refused. (Without "option forwardfor" in the shipped file or
	// without trusted_proxies, every client would be the front's
	// 127.0.0.1, already full.)
	dialFrom := func(src string) (*websocket.Conn, error) {
		tr := &http.Transport{
			DialContext:     (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext,
			TLSClientConfig: &tls.Config{RootCAs: ca.Pool()},
		}
		defer tr.CloseIdleConnections()
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ws, resp, err := websocket.Dial(dctx, relayURL, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
		if err != nil && resp != nil {
			err = fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		if ws != nil {
			t.Cleanup(func() { ws.CloseNow() })
		}
		return ws, err
	}
	for _, src := range []string{"127.0.0.5", "127.0.0.5", "127.0.0.6"} {
		if _, err := dialFrom(src); err != nil {
			t.Fatalf("a connection from %s through the front: %v", src, err)
		}
	}
	if _, err := dialFrom("127.0.0.5"); err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("a third connection from 127.0.0.5: %v, want HTTP 503 (max_connections_per_ip = 2)", err)
	}

	// Without relay_ca_file the front's certificate is not trusted.
	n, err := c.StartDevNode(ctx, "nodeC")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.StartSidecar(ctx, "sidecarC", cluster.SidecarConfig{RelayURL: relayURL, Node: n, Extra: sidecarDelivery})
	if err != nil {
		t.Fatal(err)
	}
	err = cluster.WaitFor(ctx, "sidecarC to refuse the front's certificate", func(ctx context.Context) (bool, error) {
		st, err := sc.API().Status(ctx)
		return err == nil && st.Relay.State != "connected" && strings.Contains(st.Relay.LastError, "certificate"), err
	})
	if err != nil {
		t.Fatal(err)
	}
}
