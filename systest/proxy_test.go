package systest

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"courier/internal/cluster"
	"courier/internal/dantetest"
)

// connectedRE matches the relay's log line for a new connection, with
// [log] client_details on: the client address the relay saw.
var connectedRE = regexp.MustCompile(`msg=connected .*remote=(\d+\.\d+\.\d+\.\d+):\d+`)

// relayClients returns the client addresses of the relay's "connected"
// log lines, in order.
func relayClients(t *testing.T, r *cluster.Relay) []string {
	t.Helper()
	b, err := os.ReadFile(r.Log)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range connectedRE.FindAllStringSubmatch(string(b), -1) {
		out = append(out, m[1])
	}
	return out
}

// The courier binary with relay_proxy in its TOML reaches the relay
// binary through Dante: the relay logs (client_details on) the proxy's
// outgoing address 127.0.0.2 for it and 127.0.0.1 for the direct sidecar,
// the sidecar's /v1/status says "via proxy" without the proxy's password,
// and a message is delivered INDIRECT. Deleting the relay_proxy line from
// the file, as an operator would, reconnects it directly at once.
func TestSidecarBinaryThroughSOCKS5Proxy(t *testing.T) {
	proxy := dantetest.Start(t, dantetest.Options{External: "127.0.0.2"})
	w := newWorld(t, options{relayExtra: relayLimits + "\n[log]\nclient_details = true\n", noSidecarB: true})
	// sideA connected directly in newWorld; B comes through the proxy.
	proxyURL := proxy.URL("socks5h", "")
	sideB, err := w.c.StartSidecar(w.ctx, "sidecarB", cluster.SidecarConfig{
		RelayURL: w.relay.URL(), Node: w.nodeB, Extra: sidecarDelivery,
		Top: fmt.Sprintf("relay_proxy = %q", proxyURL),
	})
	if err != nil {
		t.Fatal(err)
	}
	w.sideB = sideB
	w.waitConnected(sideB)
	st, err := sideB.API().Status(w.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Relay.Proxy != proxyURL {
		t.Errorf("B's status proxy = %q, want %q", st.Relay.Proxy, proxyURL)
	}
	if got := relayClients(t, w.relay); len(got) != 2 || got[0] != "127.0.0.1" || got[1] != "127.0.0.2" {
		t.Errorf("the relay saw connections from %v, want A from 127.0.0.1 then B from the proxy's 127.0.0.2", got)
	}
	for _, d := range []struct {
		from, to *cluster.DevNode
		side     *cluster.Sidecar
	}{{w.nodeA, w.nodeB, w.sideA}, {w.nodeB, w.nodeA, sideB}} {
		text := "socks, from " + d.from.Name
		id := w.send(d.from, d.to, text)
		if m := w.waitFinal(d.side, []string{id})[id]; m.State != "delivered" || m.Path != "INDIRECT" {
			t.Errorf("%s: %s %s (%s), want delivered INDIRECT", d.from.Name, m.State, m.Path, m.LastError)
		}
		w.checkExactlyOnce(d.to, []string{id})
	}

	// The line deleted from B's file: B reconnects directly.
	raw, err := os.ReadFile(sideB.Config)
	if err != nil {
		t.Fatal(err)
	}
	line := fmt.Sprintf("relay_proxy = %q\n", proxyURL)
	if !strings.Contains(string(raw), line) {
		t.Fatalf("B's config has no %q:\n%s", line, raw)
	}
	tmp := sideB.Config + ".edit"
	if err := os.WriteFile(tmp, []byte(strings.Replace(string(raw), line, "", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, sideB.Config); err != nil {
		t.Fatal(err)
	}
	err = cluster.WaitFor(w.ctx, "B to reconnect directly", func(ctx context.Context) (bool, error) {
		got := relayClients(t, w.relay)
		st, err := sideB.API().Status(ctx)
		return err == nil && len(got) == 3 && got[2] == "127.0.0.1" && st.Relay.State == "connected" && st.Relay.Proxy == "", err
	})
	if err != nil {
		t.Fatal(err)
	}
}
