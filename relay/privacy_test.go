package relay_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"courier/internal/syncbuf"
	"courier/relay"
	"courier/relay/sqlitestore"
	"courier/wire"
)

// logOfAnExchange runs a relay logging at level into a buffer, with
// log.client_details as given, drives a level-2 subscribe, a level-1
// subscribe and a level-2 publish delivered and acked, closes the relay
// and returns the log and the identities involved.
func logOfAnExchange(t *testing.T, level slog.Level, details bool) (log string, secrets []string) {
	t.Helper()
	cfg := testConfig(t)
	cfg.Log.ClientDetails = details
	cfg.Limits.DeliveryWait = time.Minute
	st, err := sqlitestore.Open(cfg.Store.Path, sqlitestore.Options{Quota: cfg.Limits.Quota(), Synchronous: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var buf syncbuf.Buffer
	e := newEnvLogged(t, cfg, st, slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level})))

	bob := newIdentity(t, 1)
	alice := newIdentity(t, 2)
	carol := newIdentity(t, 3)
	b := e.dial()
	b.auth2(bob, 0)
	a := e.dial()
	a.auth2(alice, 0)
	c := e.dial()
	c.subscribe1("carol-user-id", carol.Key())

	ct := ciphertext(100, "for bob")
	a.publish(ct, bob.ID(), "r1")
	d := b.expectDelivery()
	b.ack(d.ID)
	a.expectResult(wire.StatusDelivered)
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String(), []string{"127.0.0.1", bob.ID(), alice.ID(), bob.Key(), alice.Key(), carol.Key(), "carol-user-id"}
}

// By default no log line, at info or even at debug, names a client's
// address, a peer ID, a subscription key or a userID; with
// log.client_details they are logged at info.
func TestLogsHoldNoClientDetailsByDefault(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		log, secrets := logOfAnExchange(t, level, false)
		for _, s := range secrets {
			if strings.Contains(log, s) {
				t.Errorf("at %v without client_details the log names %q:\n%s", level, s, log)
			}
		}
		if level == slog.LevelDebug && !strings.Contains(log, "msg=subscribed") {
			t.Errorf("the debug log lost its connection events:\n%s", log)
		}
	}

	log, secrets := logOfAnExchange(t, slog.LevelInfo, true)
	for _, s := range secrets[:5] { // the address, both peer IDs and their keys
		if !strings.Contains(log, s) {
			t.Errorf("with client_details the info log does not name %q:\n%s", s, log)
		}
	}
}

func TestClientDetailsConfigKey(t *testing.T) {
	cfg, err := relay.ParseConfig(strings.NewReader("[log]\nclient_details = true\n"))
	if err != nil || !cfg.Log.ClientDetails {
		t.Fatalf("ParseConfig: %+v, %v", cfg.Log, err)
	}
	if _, err := relay.ParseConfig(strings.NewReader("[log]\nclient_detail = true\n")); err == nil || !strings.Contains(err.Error(), "log.client_detail") {
		t.Fatalf("a misspelt key: %v", err)
	}
}

func TestRedactingWriter(t *testing.T) {
	var buf bytes.Buffer
	line := "http: TLS handshake error from 192.0.2.7:50312: EOF; and [2001:db8::1]:443\n"
	relay.RedactingWriter(&buf, false).Write([]byte(line))
	if got := buf.String(); strings.Contains(got, "192.0.2.7") || strings.Contains(got, "2001:db8") || !strings.Contains(got, "from [client]: EOF") {
		t.Errorf("redacted %q", got)
	}
	buf.Reset()
	relay.RedactingWriter(&buf, true).Write([]byte(line))
	if buf.String() != line {
		t.Errorf("with details: %q", buf.String())
	}
}
