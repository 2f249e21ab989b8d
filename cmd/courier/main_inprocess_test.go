package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"courier/localapi/apiclient"
	"courier/sidecar"
	st "courier/sidecar/sidecartest"
	"courier/wire"
)

// openMain parses a config file with toml and the flags args, and opens it.
func openMain(t *testing.T, toml string, args ...string) (*Main, *bytes.Buffer, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "courier.toml")
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	m := NewMain(&logs)
	if err := m.ParseFlags(append([]string{"-config", path}, args...), &logs); err != nil {
		t.Fatalf("ParseFlags: %v", err)
	}
	m.Options = st.Options()
	err := m.Open()
	t.Cleanup(func() { m.Close() })
	return m, &logs, err
}

// The sidecar in-process on :0: Open binds and opens, Addr tells where,
// Run serves and delivers until its ctx ends, then Close; nothing is read
// from a log line.
func TestMainInProcess(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	sb.WaitRelay(sidecar.RelayConnected)

	m, logs, err := openMain(t, childTOML(r.URL(), a, filepath.Join(t.TempDir(), "courier.db")))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	addr := m.Addr().(*net.TCPAddr)
	if !addr.IP.IsLoopback() || addr.Port == 0 {
		t.Fatalf("Addr = %s, want a loopback port chosen by the kernel", addr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- m.Run(ctx) }()

	c := &child{t: t, api: addr.String()}
	c.waitRelay(sidecar.RelayConnected)
	ct := st.Ciphertext("in-process", 1, 300)
	if code := c.post(b.Peer, ct); code != http.StatusAccepted {
		t.Fatalf("POST = %d", code)
	}
	id := wire.MessageID(ct)
	st.Eventually(t, "the message to be delivered", func() bool { return c.get(id).State == "delivered" })
	st.Eventually(t, "B's node to get it", func() bool { return b.Inbound.AcceptedIDs()[id] == 1 })

	// `courier status` prints the last hour and what needs attention.
	var out, errb bytes.Buffer
	if err := run(ctx, []string{"status", "-api", addr.String()}, &out, &errb); err != nil {
		t.Fatalf("courier status: %v: %s", err, errb.String())
	}
	for _, want := range []string{"last hour", "INDIRECT  1, p50 ", "p99 ", "OFFLINE   none", "attention", "nothing needs attention", "0 refused"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("courier status lacks %q:\n%s", want, out.String())
		}
	}

	if err := m.Run(ctx); err == nil {
		t.Error("a second Run while the first runs: no error")
	}
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(st.WaitTimeout):
		t.Fatal("Run did not return after its ctx ended")
	}
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		t.Error("the API still accepts connections after Run returned")
	}
	for range 2 { // idempotent
		if err := m.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
	}
	if !strings.Contains(logs.String(), `"msg":"courier stopped"`) {
		t.Errorf("no \"courier stopped\" in the log:\n%s", logs)
	}
	// The store is free again: another Main opens it.
	m2, _, err := openMain(t, childTOML(r.URL(), a, m.Config.Store.Path))
	if err != nil {
		t.Fatalf("reopen the store after Close: %v", err)
	}
	if err := m2.Close(); err != nil {
		t.Errorf("Close without Run = %v", err)
	}
}

// Open reports at once what keeps courier from starting: the address
// taken, the store held by another courier.
func TestMainOpenErrors(t *testing.T) {
	n := st.NewNode(t, "A")
	store := filepath.Join(t.TempDir(), "courier.db")
	first, _, err := openMain(t, childTOML("", n, store))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}

	t.Run("store in use", func(t *testing.T) {
		_, _, err := openMain(t, childTOML("", n, store))
		if err == nil || !strings.Contains(err.Error(), "courier.db") {
			t.Errorf("second Open on the same store = %v, want an error naming it", err)
		}
	})
	t.Run("address taken", func(t *testing.T) {
		_, _, err := openMain(t, childTOML("", n, filepath.Join(t.TempDir(), "other.db")), "-listen", first.Addr().String())
		if err == nil || !strings.Contains(err.Error(), "api.listen:") {
			t.Errorf("Open on a taken address = %v, want an api.listen error", err)
		}
	})
	t.Run("run after close", func(t *testing.T) {
		m, _, err := openMain(t, childTOML("", n, filepath.Join(t.TempDir(), "third.db")))
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
		if err := m.Run(context.Background()); err == nil {
			t.Error("Run after Close: no error")
		}
	})
	t.Run("help", func(t *testing.T) {
		var out bytes.Buffer
		err := NewMain(&out).ParseFlags([]string{"-h"}, &out)
		if !errors.Is(err, errHelp) || !strings.Contains(out.String(), "-config") {
			t.Errorf("-h = %v, %q", err, out.String())
		}
	})
}

// `courier status` prints the attention list one line each, after the
// table, and the minutes as a sparkline.
func TestPrintStatus(t *testing.T) {
	per := make([]int, 60)
	per[0], per[58], per[59] = 1, 4, 8
	st := apiclient.Status{
		Relay:    apiclient.RelayStatus{State: "connected", Since: time.Date(2026, 12, 1, 2, 0, 0, 0, time.UTC)},
		LastHour: map[string]apiclient.PathHour{"INDIRECT": {Delivered: 13, P50Ms: 1.19, P99Ms: 2400, PerMinute: per}},
		Attention: []apiclient.NeedsAttention{{Direction: "inbound", ID: strings.Repeat("ab", 32), State: "refused", Attempts: 1,
			Since: time.Date(2026, 12, 1, 2, 5, 0, 0, time.UTC), Reason: "refused by the node: 422 (not retried)"}},
	}
	var out bytes.Buffer
	printStatus(&out, st)
	for _, want := range []string{
		"last hour  INDIRECT  13, p50 1.19 ms, p99 2.4 s  [▁" + strings.Repeat(" ", 57) + "▄█]",
		"OFFLINE   none",
		"attention  1 messages:\n  inbound  abababababab…  refused -, 1 attempts, since 2026-12-01T02:05:00Z: refused by the node: 422 (not retried)\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}
