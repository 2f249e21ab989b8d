package sidecar_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// A new POST (Submit) of a failed message queues it again: state queued,
// attempts 0, and on its way once more.
func TestFailedMessageRevived(t *testing.T) {
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	cfg := st.Config(a, "", t.TempDir())
	cfg.Delivery.OfflineMaxAttempts = 2
	s := st.StartSidecar(t, a, cfg, st.Options())
	a.Offline.FailAlways(http.StatusServiceUnavailable)
	ct := st.Ciphertext("revive", 1, 100)
	id := s.Submit(b, ct)
	s.WaitMessage(id, queue.Failed)
	att, err := s.E.Attention(context.Background(), time.Hour, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(att.Failed) != 1 || att.Failed[0].ID != id || att.Failed[0].Ciphertext != nil || !strings.Contains(att.Failed[0].LastError, "gave up") || len(att.Waiting) != 0 {
		t.Errorf("Attention = %+v, want the failed message, without its ciphertext", att)
	}

	a.Offline.Recover()
	m, created, err := s.E.Submit(context.Background(), b.Peer.String(), ct)
	if err != nil || created {
		t.Fatalf("Submit again: created %v, err %v; want known, no error", created, err)
	}
	if m.ID != id || m.State != queue.Queued || m.Attempts != 0 || m.Path != queue.PathNone || !strings.Contains(m.LastError, "queued again") {
		t.Errorf("Submit of a failed message = %+v, want it queued again with attempts 0", m)
	}
	if m := s.WaitMessage(id, queue.HandedOff); m.Attempts != 1 {
		t.Errorf("handed off after %d attempts, want 1", m.Attempts)
	}
	// A message that is not failed is left as it is.
	m, created, err = s.E.Submit(context.Background(), b.Peer.String(), ct)
	if err != nil || created || m.State != queue.HandedOff {
		t.Errorf("Submit of a handed-off message = %v, %v, %v; want it as it is", m.State, created, err)
	}
	if n := len(a.Offline.Accepted()); n != 1 {
		t.Errorf("OFFLINE endpoint took it %d times, want 1", n)
	}
	// The status page's numbers: one OFFLINE delivery this hour.
	stat, err := s.E.Status(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	stats := stat.LastHour
	if off := stats[queue.PathOffline]; off.Delivered != 1 || off.PerMinute[len(off.PerMinute)-1]+off.PerMinute[len(off.PerMinute)-2] != 1 || off.P50Ms <= 0 {
		t.Errorf("OFFLINE stats = %+v", off)
	}
	if ind := stats[queue.PathIndirect]; ind.Delivered != 0 {
		t.Errorf("INDIRECT stats = %+v", ind)
	}
}

// A message larger than the relay accepts (its default 4 MiB) but within
// the sidecar's own limit is accepted and goes OFFLINE at once, without a
// publish; only one over api.max_message_bytes is refused.
func TestLargerThanTheRelayGoesOffline(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	cfg := st.Config(a, r.URL(), t.TempDir())
	// Over 4 MiB through JSON, under -race, on two loaded cores: the fake
	// node may take seconds to read it. Patience, not a retry.
	opts := st.Options()
	opts.NodeTimeout = 2 * time.Minute
	s := st.StartSidecar(t, a, cfg, opts)
	s.WaitRelay(sidecar.RelayConnected)
	noAck := st.DialNoAck(t, r, b)

	big := st.Ciphertext("big", 1, r.Cfg.Limits.MaxMessageBytes+1)
	id := s.Submit(b, big)
	deadline := time.Now().Add(3 * time.Minute)
	for s.Message(id).State != queue.HandedOff {
		if time.Now().After(deadline) {
			m := s.Message(id)
			t.Fatalf("not handed off within 3 minutes: %s, path %q, attempts %d, last error %q", m.State, m.Path, m.Attempts, m.LastError)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition
	}
	m := s.Message(id)
	if m.Path != queue.PathOffline || !strings.Contains(m.LastError, "too_large") {
		t.Errorf("path %q, last error %q; want OFFLINE, too_large", m.Path, m.LastError)
	}
	if got := a.Offline.Accepted(); len(got) != 1 || got[0].ID != id || len(got[0].Ciphertext) != len(big) {
		t.Errorf("OFFLINE endpoint got %d messages, want the big one intact", len(got))
	}
	if n := labelledCounter(t, s.E, "courier_fallbacks_total", "too_large"); n != 1 {
		t.Errorf("fallbacks{too_large} = %v, want 1", n)
	}
	if ids := noAck.Received(); len(ids) != 0 {
		t.Errorf("the relay pushed %d messages: the big one was published", len(ids))
	}

	if s.E.MaxMessageBytes() != sidecar.MaxMessageBytes {
		t.Errorf("MaxMessageBytes() = %d, want the default %d", s.E.MaxMessageBytes(), sidecar.MaxMessageBytes)
	}
	cfg.API.MaxMessageBytes = 1000
	if err := s.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.E.Submit(context.Background(), b.Peer.String(), make([]byte, 1001)); !errors.Is(err, sidecar.ErrTooLarge) || !strings.Contains(err.Error(), "api.max_message_bytes") {
		t.Errorf("Submit over api.max_message_bytes = %v, want ErrTooLarge naming the key", err)
	}
}

// With node credentials configured, every call to the node carries them:
// sign (the relay login), OFFLINE and inbound. A node that requires them
// answers 401 to a sidecar without; the credentials are never logged; a
// new cookie written by a restarted node is picked up.
func TestNodeCredentials(t *testing.T) {
	const user, password, cookie = "courier", "pass word: s3cret", "Zm9vYmFyYmF6cXV4"
	dir := t.TempDir()
	passwordFile := filepath.Join(dir, "password")
	cookieFile := filepath.Join(dir, ".cookie")
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(passwordFile, password+"\n")
	write(cookieFile, "OpenBazaar_Auth_Cookie="+cookie)

	r := st.StartRelay(t, nil, nil)
	logs := st.NewRecordHandler()
	var sides []*st.Sidecar
	for _, name := range []string{"A", "B"} {
		n := st.NewNode(t, name)
		n.RequireAuth(user, password, cookie)
		cfg := st.Config(n, r.URL(), t.TempDir())
		cfg.Node.Username, cfg.Node.PasswordFile, cfg.Node.CookieFile = user, passwordFile, cookieFile
		s := st.StartSidecarLogging(t, n, cfg, st.Options(), slog.New(logs))
		sides = append(sides, s)
	}
	a, b := sides[0], sides[1]
	a.WaitRelay(sidecar.RelayConnected) // signed with credentials
	b.WaitRelay(sidecar.RelayConnected)
	id := a.Submit(b.Node, st.Ciphertext("with credentials", 1, 100))
	a.WaitMessage(id, queue.Delivered)
	waitInbound(t, b.Node, id) // pushed with credentials

	// OFFLINE with credentials: a recipient that is away.
	away := st.NewNode(t, "away")
	off := a.Submit(away, st.Ciphertext("offline with credentials", 2, 100))
	a.WaitMessage(off, queue.HandedOff)
	if n := a.Node.Denied() + b.Node.Denied(); n != 0 {
		t.Errorf("the nodes denied %d calls", n)
	}

	// The node starts again with a new cookie: the sidecar reads it again.
	const cookie2 = "bmV3IGNvb2tpZQ"
	a.Node.RequireAuth(user, password, cookie2)
	write(cookieFile, "OpenBazaar_Auth_Cookie="+cookie2+"\n")
	off2 := a.Submit(away, st.Ciphertext("new cookie", 3, 100))
	a.WaitMessage(off2, queue.HandedOff)

	// Without credentials: 401, reported, retried.
	c := st.NewNode(t, "C")
	c.RequireAuth(user, password, cookie)
	sc := st.StartSidecar(t, c, st.Config(c, r.URL(), t.TempDir()), st.Options())
	st.Eventually(t, "C's relay status to show the sign endpoint's 401", func() bool {
		return strings.Contains(sc.E.RelayStatus().LastError, "401")
	})
	if c.Denied() == 0 {
		t.Error("C's node denied nothing")
	}

	for _, secret := range []string{password, cookie, cookie2, "s3cret"} {
		if lines := logs.Lines(secret); len(lines) != 0 {
			t.Errorf("a credential was logged: %q", lines[0])
		}
	}
}
