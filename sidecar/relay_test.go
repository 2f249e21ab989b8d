package sidecar_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"courier/relay"
	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// The sidecar signs a challenge only for relay_url's host or relay_host:
// a relay whose challenge names another host (here its public_host differs
// from the URL's) gets no signature, the sign endpoint is never asked for
// it, and the status says why. Configuring relay_host lets it log in.
func TestChallengeForAnotherHostIsNotSigned(t *testing.T) {
	r := st.StartRelay(t, func(c *relay.Config) { c.PublicHost = "other-relay.example" }, nil)
	a := st.NewNode(t, "A")
	cfg := st.Config(a, r.URL(), t.TempDir())
	s := st.StartSidecar(t, a, cfg, st.Options())
	var status sidecar.RelayStatus
	st.Eventually(t, "the refusal in A's relay status", func() bool {
		status = s.E.RelayStatus()
		return strings.Contains(status.LastError, "other-relay.example") && strings.Contains(status.LastError, "not signed")
	})
	if status.State == sidecar.RelayConnected || status.PeerID != "" {
		t.Errorf("status = %+v, want not connected", status)
	}
	signed := func() (challenges int) {
		for _, r := range a.Sign.Requests() {
			if strings.HasPrefix(r.Content, "courier-auth:v1:") {
				challenges++
			}
		}
		return challenges
	}
	if n := signed(); n != 0 {
		t.Errorf("the sign endpoint was asked to sign %d challenges for another host", n)
	}
	if n := len(a.Sign.Requests()); n == 0 {
		t.Error("the sign endpoint was never called: the identity check did not run, so neither did the host check")
	}

	cfg.RelayHost = "other-relay.example"
	if err := s.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	s.WaitRelay(sidecar.RelayConnected)
	if signed() == 0 {
		t.Error("connected without signing a challenge")
	}
	for _, r := range a.Sign.Requests() {
		if strings.HasPrefix(r.Content, "courier-auth:v1:") && !strings.HasPrefix(r.Content, "courier-auth:v1:other-relay.example:") {
			t.Errorf("signed %q", r.Content)
		}
	}
}

// After relay_url changes, the status says connecting at once, not the old
// connection's connected.
func TestRelayURLChangeSaysConnectingAtOnce(t *testing.T) {
	r1 := st.StartRelay(t, nil, nil)
	r2 := st.StartRelay(t, nil, nil)
	a := st.NewNode(t, "A")
	cfg := st.Config(a, r1.URL(), t.TempDir())
	s := st.StartSidecar(t, a, cfg, st.Options())
	s.WaitRelay(sidecar.RelayConnected)
	before := time.Now()
	cfg.RelayURL = r2.URL()
	if err := s.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	got := s.E.RelayStatus()
	if got.State != sidecar.RelayConnecting || got.Since.Before(before) || got.PeerID != "" {
		t.Errorf("status just after the URL change = %+v, want connecting since the change", got)
	}
	if err := s.E.Ready(context.Background()); err != nil {
		t.Errorf("Ready just after the change, within the grace: %v", err)
	}
	s.WaitRelay(sidecar.RelayConnected)

	cfg.RelayURL = ""
	if err := s.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if got := s.E.RelayStatus(); got.State != sidecar.RelayDisabled {
		t.Errorf("status just after opting out = %+v, want disabled", got)
	}
}

// A sidecar's first connection is not a comeback: a queued answer goes
// OFFLINE at once, however long relay_grace, whether the relay was up when
// the sidecar started or came up after it.
func TestFirstConnectionIsNotAComeback(t *testing.T) {
	const grace = time.Minute // longer than every wait here: only the rule can pass the test
	for _, relayLate := range []bool{false, true} {
		name := "relay up first"
		if relayLate {
			name = "relay up after the sidecar"
		}
		t.Run(name, func(t *testing.T) {
			r := st.StartRelay(t, nil, nil)
			if relayLate {
				r.Stop()
			}
			a, b := st.NewNode(t, "A"), st.NewNode(t, "B") // B never connects
			cfg := st.Config(a, r.URL(), t.TempDir())
			cfg.Delivery.RelayGrace = grace
			s := st.StartSidecar(t, a, cfg, st.Options())
			if relayLate {
				st.Eventually(t, "A to fail a connection attempt", func() bool {
					return s.E.RelayStatus().LastError != ""
				})
				r.Restart()
			}
			s.WaitRelay(sidecar.RelayConnected)
			id := s.Submit(b, st.Ciphertext("first", 1, 100))
			m := s.WaitMessage(id, queue.HandedOff)
			if !strings.Contains(m.LastError, "relay answered queued") || strings.Contains(m.LastError, "came back") {
				t.Errorf("last error %q, want the queued answer, sent OFFLINE at once", m.LastError)
			}
			if n := labelledCounter(t, s.E, "courier_publish_results_total", "queued"); n != 1 {
				t.Errorf("%v publishes answered queued, want 1: no INDIRECT retry after a first connection", n)
			}
		})
	}
}

// After a comeback, a queued answer is retried INDIRECT with a backoff that
// doubles, while within relay_grace of the comeback, then goes OFFLINE.
// With a 6 s grace that is at most 7 publishes (it was one every 500 ms:
// 12 or more).
func TestQueuedAfterComebackBacksOff(t *testing.T) {
	const grace = 6 * time.Second
	p := startPair(t, nil, func(c *sidecar.Config) { c.Delivery.RelayGrace = grace })
	p.b.Stop() // B is away for good
	p.relay.Stop()
	p.relay.Restart()
	back := time.Now()
	p.a.WaitRelay(sidecar.RelayConnected)
	id := p.a.Submit(p.b.Node, st.Ciphertext("backoff", 1, 100))
	m := p.a.WaitMessage(id, queue.HandedOff)
	if waited := m.UpdatedAt.Sub(back); waited < grace {
		t.Errorf("handed off %s after the comeback, within the %s grace", waited, grace)
	}
	n := labelledCounter(t, p.a.E, "courier_publish_results_total", "queued")
	t.Logf("%v publishes answered queued", n)
	if n < 3 || n > 7 {
		t.Errorf("%v publishes answered queued within a %s grace, want 3 to 7 (doubling backoff from 250 ms)", n, grace)
	}
}
