package main

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/internal/syncbuf"
	"courier/internal/testcert"
	"courier/wire"
)

// openTLSRelay runs courier-relay from a TOML file with a [tls] section
// naming the certificate ca signed with serial 1, checking the files for a
// renewal every 20ms.
func openTLSRelay(t *testing.T, ca *testcert.CA) (m *Main, certFile, keyFile string, log *syncbuf.Buffer) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca.WriteLeaf(t, 1, certFile, keyFile)
	cfg := writeConfig(t, testConfig+"[tls]\ncert_file = \""+certFile+"\"\nkey_file = \""+keyFile+"\"\n")
	log = new(syncbuf.Buffer)
	m = NewMain(log)
	if err := m.ParseFlags([]string{"-config", cfg, "-listen", "127.0.0.1:0"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	m.Config.TLS.ReloadInterval = 20 * time.Millisecond
	if err := m.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	return m, certFile, keyFile, log
}

// servedSerial is the serial number of the certificate a new TLS
// connection to addr is served.
func servedSerial(t *testing.T, addr string, ca *testcert.CA) int64 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func caClient(ca *testcert.CA) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
}

// A relay with [tls] serves https:// and wss://; a certificate renewed on
// disk is served to new connections while an open WebSocket stays up; a
// renewed pair that does not load leaves the last good one in service.
func TestTLSServesAndPicksUpARenewedCertificate(t *testing.T) {
	ca := testcert.NewCA(t)
	m, certFile, keyFile, log := openTLSRelay(t, ca)
	addr := m.Addr().String()
	hc := caClient(ca)
	defer hc.CloseIdleConnections()

	resp, err := hc.Get("https://" + addr + "/")
	if err != nil {
		t.Fatalf("https GET /: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"name":"courier-relay"`) {
		t.Fatalf("GET / = %s", body)
	}
	// Plain HTTP to the TLS port gets no relay answer.
	if resp, err := http.Get("http://" + addr + "/"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "courier-relay") {
			t.Fatalf("plain http answered by the relay: %s", b)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "wss://"+addr+"/", &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	defer ws.CloseNow()
	peer := wire.PeerIDFromPublicKey(make([]byte, 36))
	if err := ws.Write(ctx, websocket.MessageText, wire.ClientFrameBytes(wire.TypeSubscribe, wire.Subscribe{UserID: "u", SubscriptionKey: peer.SubscriptionKey(wire.RelayPrefixBits)})); err != nil {
		t.Fatal(err)
	}
	if _, b, err := ws.Read(ctx); err != nil || string(b) != string(wire.SubscribeOK) {
		t.Fatalf("subscribe: %s %v", b, err)
	}
	if got := servedSerial(t, addr, ca); got != 1 {
		t.Fatalf("served serial %d, want 1", got)
	}

	// Renewal: a new pair, written as certbot does, is served to a new
	// connection within the reload interval.
	ca.WriteLeaf(t, 2, certFile, keyFile)
	future := time.Now().Add(time.Minute) // a changed mtime even on a coarse clock
	os.Chtimes(certFile, future, future)
	deadline := time.Now().Add(20 * time.Second)
	for servedSerial(t, addr, ca) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the renewed certificate is not served; log:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(log.String(), "loaded a renewed certificate") {
		t.Errorf("the renewal is not logged:\n%s", log.String())
	}

	// The WebSocket opened before the renewal still works.
	ct := []byte("still here after the renewal")
	if err := ws.Write(ctx, websocket.MessageText, wire.ClientFrameBytes(wire.TypePublish, wire.Publish{EncryptedMessage: base64.StdEncoding.EncodeToString(ct), Recipient: peer.String()})); err != nil {
		t.Fatalf("publish on the old connection: %v", err)
	}
	for {
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("the connection opened before the renewal was dropped: %v", err)
		}
		f, err := wire.ParseServerFrame(b)
		if err != nil {
			t.Fatal(err)
		}
		if f.Kind == wire.KindDelivery {
			if f.Delivery.EncryptedMessage != base64.StdEncoding.EncodeToString(ct) {
				t.Fatalf("delivered %q", f.Delivery.EncryptedMessage)
			}
			break
		}
	}

	// A broken renewal (a key that does not match) keeps serial 2 in service.
	_, otherKey := ca.Leaf(t, 3)
	c3, _ := ca.Leaf(t, 4)
	testcert.WriteFile(t, certFile, c3)
	testcert.WriteFile(t, keyFile, otherKey)
	later := future.Add(time.Minute)
	os.Chtimes(certFile, later, later)
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), "does not load") {
		servedSerial(t, addr, ca) // a handshake makes it look
		if time.Now().After(deadline) {
			t.Fatalf("the broken renewal is not logged:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := servedSerial(t, addr, ca); got != 2 {
		t.Fatalf("after a broken renewal the relay serves serial %d, want the last good 2", got)
	}
}

// net/http's error log names the client of a failed handshake; without
// log.client_details its address is redacted.
func TestTLSHandshakeErrorLogsNoClientAddress(t *testing.T) {
	ca := testcert.NewCA(t)
	m, _, _, log := openTLSRelay(t, ca)
	addr := m.Addr().String()
	if c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: testcert.NewCA(t).Pool()}); err == nil {
		c.Close()
		t.Fatal("a client with another CA verified the relay")
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), "TLS handshake error") {
		if time.Now().After(deadline) {
			t.Fatalf("no handshake error logged:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, "TLS handshake error") && (strings.Contains(line, "127.0.0.1") || !strings.Contains(line, "[client]")) {
			t.Errorf("the client's address is logged: %s", line)
		}
	}
}

func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ name, tls, want string }{
		{"cert only", "cert_file = \"" + dir + "/c.pem\"", "tls.key_file: must be set with tls.cert_file"},
		{"key only", "key_file = \"" + dir + "/k.pem\"", "tls.cert_file: must be set with tls.key_file"},
		{"missing files", "cert_file = \"" + dir + "/c.pem\"\nkey_file = \"" + dir + "/k.pem\"", "tls.cert_file: cannot be read"},
		{"unknown key", "cert = \"x\"", "unknown key tls.cert"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := writeConfig(t, testConfig+"[tls]\n"+c.tls+"\n")
			err := NewMain(io.Discard).ParseFlags([]string{"-config", cfg}, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
	// Files that exist but are not a certificate and key: Open names the keys.
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not PEM"), 0o600)
	cfg := writeConfig(t, testConfig+"[tls]\ncert_file = \""+garbage+"\"\nkey_file = \""+garbage+"\"\n")
	m := NewMain(io.Discard)
	if err := m.ParseFlags([]string{"-config", cfg, "-listen", "127.0.0.1:0"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	err := m.Open()
	if err == nil {
		m.Close(context.Background())
		t.Fatal("Open served a garbage certificate")
	}
	if !strings.Contains(err.Error(), "tls.cert_file / tls.key_file") {
		t.Fatalf("Open: %v", err)
	}
}
