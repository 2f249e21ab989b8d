package apiclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"courier/localapi"
	"courier/localapi/apiclient"
	"courier/sidecar"
	st "courier/sidecar/sidecartest"
	"courier/wire"
)

// start runs a real engine for a new node (polling, no inbound endpoint)
// with the real local API in front, and a client for it.
func start(t *testing.T, token, relayURL string) (*apiclient.Client, *st.Sidecar, *st.Node) {
	t.Helper()
	n := st.NewNode(t, "api")
	cfg := st.Config(n, relayURL, t.TempDir())
	cfg.Node.InboundURL = ""
	cfg.API.Token = token
	s := st.StartSidecar(t, n, cfg, st.Options())
	hs := httptest.NewServer(localapi.New(s.E, token, st.Logger()))
	t.Cleanup(hs.Close)
	c, err := apiclient.New(hs.URL, apiclient.Options{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c, s, n
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), st.WaitTimeout)
	t.Cleanup(cancel)
	return c
}

func TestSubmitAndMessage(t *testing.T) {
	c, _, n := start(t, "", "")
	to := st.NewNode(t, "recipient").Peer.String()
	ct := []byte("through the client")
	id := wire.MessageID(ct)

	s, err := c.Submit(ctx(t), to, ct)
	if err != nil || s.ID != id || s.State != "queued" || !s.Created {
		t.Fatalf("Submit = %+v, %v; want %s queued, created", s, err, id)
	}
	if s, err = c.Submit(ctx(t), to, ct); err != nil || s.ID != id || s.Created {
		t.Errorf("Submit again = %+v, %v; want known, not created", s, err)
	}
	var m apiclient.Message
	st.Eventually(t, "handed_off", func() bool {
		if m, err = c.Message(ctx(t), id); err != nil {
			t.Fatal(err)
		}
		return m.Final()
	})
	if m.ID != id || m.Recipient != to || m.State != "handed_off" || m.Path != "OFFLINE" || m.Attempts != 1 ||
		m.CreatedAt.IsZero() || m.UpdatedAt.Before(m.CreatedAt) || m.LastError != "no relay configured" {
		t.Errorf("Message = %+v", m)
	}
	if n.Offline.AcceptedIDs()[id] != 1 {
		t.Error("the node's OFFLINE endpoint did not get it")
	}
}

// Every error answer comes back as an *Error with the status and the
// sidecar's JSON error text.
func TestErrors(t *testing.T) {
	c, _, _ := start(t, "", "")
	unknown := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name   string
		call   func() error
		status int
		want   string
	}{
		{"bad recipient", func() error { _, err := c.Submit(ctx(t), "QmNope", []byte("x")); return err }, 400, "recipient:"},
		{"empty ciphertext", func() error { _, err := c.Submit(ctx(t), "QmNope", nil); return err }, 400, "ciphertext: empty"},
		{"unknown message", func() error { _, err := c.Message(ctx(t), unknown); return err }, 404, "no message with id " + unknown},
		{"bad id", func() error { _, err := c.Message(ctx(t), "../status"); return err }, 400, "id: not a message ID"},
		{"unknown ack", func() error { return c.Ack(ctx(t), unknown) }, 404, "no inbound message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var e *apiclient.Error
			if !errors.As(err, &e) || e.Status != tc.status || !strings.Contains(e.Message, tc.want) || !apiclient.IsStatus(err, tc.status) {
				t.Fatalf("err = %#v, want *Error %d with %q", err, tc.status, tc.want)
			}
			if !strings.Contains(e.Error(), tc.want) || strings.Contains(e.Message, `{"error"`) {
				t.Errorf("Error() = %q", e.Error())
			}
		})
	}

	// Nothing listening: a transport error, not an *Error.
	dead, _ := apiclient.New("127.0.0.1:1", apiclient.Options{})
	if _, err := dead.Status(ctx(t)); err == nil || apiclient.IsStatus(err, 0) {
		t.Errorf("Status from nothing = %v", err)
	}
	for _, bad := range []string{"ftp://127.0.0.1:1", "http://", "http://h:1/?q=1", "::"} {
		if _, err := apiclient.New(bad, apiclient.Options{}); err == nil {
			t.Errorf("New(%q): no error", bad)
		}
	}
}

func TestToken(t *testing.T) {
	const token = "0123456789abcdef-client"
	c, _, _ := start(t, token, "")
	if _, err := c.Status(ctx(t)); err != nil {
		t.Fatalf("Status with the token: %v", err)
	}
	without, _ := apiclient.New(c.URL(), apiclient.Options{})
	if _, err := without.Status(ctx(t)); !apiclient.IsStatus(err, http.StatusUnauthorized) {
		t.Errorf("Status without the token = %v, want 401", err)
	}
}

// The node polls: Inbox waits for a message, Ack takes it out.
func TestInboxAndAck(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	c, sb, node := start(t, "", r.URL())
	sender := st.NewNode(t, "sender")
	sa := st.StartSidecar(t, sender, st.Config(sender, r.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)

	if msgs, err := c.Inbox(ctx(t), 0); err != nil || len(msgs) != 0 {
		t.Fatalf("empty Inbox = %v, %v", msgs, err)
	}
	polled := make(chan []apiclient.InboxMessage, 1)
	go func() {
		msgs, err := c.Inbox(context.Background(), 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		polled <- msgs
	}()
	ct := st.Ciphertext("client inbox", 1, 400)
	id := sa.Submit(node, ct)
	var got []apiclient.InboxMessage
	select {
	case got = <-polled:
	case <-time.After(st.WaitTimeout):
		t.Fatal("the long poll did not return with the message")
	}
	if len(got) != 1 || got[0].ID != id || !bytes.Equal(got[0].Ciphertext, ct) || got[0].Path != "INDIRECT" || got[0].ReceivedAt.IsZero() {
		t.Fatalf("Inbox = %+v, want %s", got, id)
	}
	for range 2 {
		if err := c.Ack(ctx(t), id); err != nil {
			t.Errorf("Ack: %v", err)
		}
	}
	if msgs, err := c.Inbox(ctx(t), 0); err != nil || len(msgs) != 0 {
		t.Errorf("Inbox after the ack = %v, %v", msgs, err)
	}
}

// Status decodes everything /v1/status carries (a field the client does
// not know is an error here), and Ready says why not.
func TestStatusAndReady(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	url := r.URL()
	c, s, _ := start(t, "", url)
	s.WaitRelay(sidecar.RelayConnected)
	id := s.Submit(st.NewNode(t, "recipient"), []byte("counted"))
	s.WaitMessage(id, "handed_off") // the recipient is not connected: OFFLINE

	stat, err := c.Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if stat.Relay.State != "connected" || stat.Relay.PeerID == "" || stat.Paths["OFFLINE"] != 1 || stat.Outbox["handed_off"] != 1 ||
		stat.Node["offline"].LastOK.IsZero() || stat.Node["sign"].ConsecutiveFailures != 0 {
		t.Errorf("Status = %+v", stat)
	}
	raw, err := http.Get(c.URL() + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Body.Close()
	dec := json.NewDecoder(raw.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(new(apiclient.Status)); err != nil {
		t.Errorf("/v1/status has what apiclient.Status lacks: %v", err)
	}
	if err := c.Ready(ctx(t)); err != nil {
		t.Errorf("Ready = %v", err)
	}

	r.Stop()
	st.Eventually(t, "not ready", func() bool { return c.Ready(ctx(t)) != nil })
	err = c.Ready(ctx(t))
	var e *apiclient.Error
	if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || !strings.Contains(e.Message, "relay") {
		t.Errorf("Ready with the relay gone = %v, want 503 naming the relay", err)
	}
}
