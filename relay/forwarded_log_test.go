package relay_test

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"courier/internal/syncbuf"
	"courier/relay/sqlitestore"
)

// TestForwardedAddressInLogs: behind a trusted front, the connected log
// line with log.client_details names the client the front names in
// X-Forwarded-For, not the front; without client_details that address is
// in no log line, at debug either.
func TestForwardedAddressInLogs(t *testing.T) {
	const client = "203.0.113.77"
	for _, details := range []bool{true, false} {
		cfg := testConfig(t)
		cfg.Log.ClientDetails = details
		cfg.TrustedProxies = []string{"127.0.0.1"}
		st, err := sqlitestore.Open(cfg.Store.Path, sqlitestore.Options{Synchronous: "normal", Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		var buf syncbuf.Buffer
		e := newEnvLogged(t, cfg, st, slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
		c, err := e.tryDialHeader(http.Header{"X-Forwarded-For": {"198.51.100.1, " + client}})
		if err != nil {
			t.Fatal(err)
		}
		c.subscribe1("u", newIdentity(t, 1).Key())
		if err := e.srv.Close(); err != nil {
			t.Fatal(err)
		}
		st.Close()
		log := buf.String()
		var connected string
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "msg=connected") {
				connected = l
			}
		}
		switch {
		case details && !strings.Contains(connected, "remote="+client):
			t.Errorf("with client_details the connected line does not name %s: %q", client, connected)
		case details && strings.Contains(log, "198.51.100.1"):
			t.Errorf("the log names the client's own X-Forwarded-For entry:\n%s", log)
		case !details && strings.Contains(log, client):
			t.Errorf("without client_details the log names %s:\n%s", client, log)
		}
	}
}
