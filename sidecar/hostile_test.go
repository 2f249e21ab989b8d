package sidecar_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	_ "github.com/mattn/go-sqlite3"

	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
	"courier/wire"
)

// TestAnonymousUserIDDamaged: a meta row whose userID is empty, a peer ID
// (which would name the node), or not what the sidecar makes is replaced
// by a fresh random one, and the sidecar connects. Before, upstream.New
// refused such a userID and the relay link stayed "connecting" forever,
// with every message waiting and never going OFFLINE.
func TestAnonymousUserIDDamaged(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	for _, bad := range []string{"", a.Peer.String(), b.Peer.String(), "   ", "x\x00y"} {
		t.Run(fmtBad(bad), func(t *testing.T) {
			dir := t.TempDir()
			cfg := anonymousConfig(a, r.URL(), dir)
			path := filepath.Join(dir, "courier.db")
			q, err := queue.Open(path, queue.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			db, err := sql.Open("sqlite3", path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`INSERT INTO meta (key, value) VALUES ('anonymous_user_id', ?)`, bad); err != nil {
				t.Fatal(err)
			}
			db.Close()

			s := st.StartSidecar(t, a, cfg, st.Options())
			s.WaitRelay(sidecar.RelayConnected)
			s.Stop()

			db, err = sql.Open("sqlite3", path)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var got string
			if err := db.QueryRowContext(context.Background(), `SELECT value FROM meta WHERE key = 'anonymous_user_id'`).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got == bad || len(got) != 32 {
				t.Errorf("stored userID %q after a damaged %q, want a fresh 32-hex one", got, bad)
			}
		})
	}
}

func fmtBad(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > 12 {
		return "peerID"
	}
	return "junk"
}

// A slow node that keeps taking messages, one at a time, while many large
// ones arrive: the messages pushed to it directly (held in memory until it
// has them) stay within the byte bound; the rest waits in the inbox, on
// disk, and reaches the node in order once it catches up. Before, up to
// 1,024 messages were held whatever their size.
func TestDirectPushBoundedInBytes(t *testing.T) {
	const (
		n     = 40
		size  = 128 << 10
		bound = 1 << 20 // 8 messages
	)
	r := st.StartRelay(t, nil, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	optsA := st.Options()
	optsA.NodeTimeout = 2 * time.Minute // the held calls must not time out
	sa := st.StartSidecar(t, a, st.Config(a, r.URL(), t.TempDir()), sidecar.WithMaxDirectBytes(optsA, bound))
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)
	arrived, release := a.Inbound.Hold()
	defer release()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = sb.Submit(a, st.Ciphertext("large", i, size))
	}
	<-arrived
	var stat sidecar.Status
	st.Eventually(t, "A's inbox to hold all the messages", func() bool {
		var err error
		stat, err = sa.E.Status(context.Background(), 0)
		return err == nil && stat.Inbox.Pending == n
	})
	t.Logf("inbox %+v, relay %+v", stat.Inbox, stat.Relay)
	// One batch may exceed the bound when nothing else is held (its
	// first); later ones wait. Batches are small here (the relay pushes
	// each message as B publishes it), so a generous margin.
	if c := sa.E.DirectClaimed(); c*size > 3*bound {
		t.Errorf("%d messages of %d KiB (%d MiB) held in memory for the slow node, want at most %d MiB", c, size>>10, c*size>>20, 3*bound>>20)
	}
	release()
	st.Eventually(t, "A's node to take every message", func() bool { return len(a.Inbound.AcceptedIDs()) == n })
	got := a.Inbound.Accepted()
	seen := map[string]bool{}
	k := 0
	for _, req := range got {
		if seen[req.ID] {
			continue
		}
		seen[req.ID] = true
		if req.ID != ids[k] {
			t.Fatalf("inbound #%d is %.8s, want %.8s: the order is kept", k, req.ID, ids[k])
		}
		k++
	}
}

// A level-2 relay that answers every publish with a status of its own
// making ("bogus-1", "bogus-2", … with a long tail): every message still
// goes OFFLINE, the metrics get a bounded set of labels, not one series
// per answer, and a message's last error quotes a bounded part of it.
func TestBogusPublishStatusesBounded(t *testing.T) {
	const n = 30
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		c, err := websocket.Accept(w, req, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(-1)
		ctx := req.Context()
		if _, _, err := c.Read(ctx); err != nil { // AuthRequest
			return
		}
		nonce := make([]byte, 32)
		_, _ = rand.Read(nonce)
		if c.Write(ctx, websocket.MessageText, wire.ChallengeFrame(wire.AuthChallenge{Nonce: base64.StdEncoding.EncodeToString(nonce), Host: "127.0.0.1"})) != nil {
			return
		}
		if _, _, err := c.Read(ctx); err != nil { // SubscribeMessage, not checked
			return
		}
		if c.Write(ctx, websocket.MessageText, wire.SubscribeOK) != nil {
			return
		}
		for i := 0; ; i++ {
			_, b, err := c.Read(ctx)
			if err != nil {
				return
			}
			f, err := wire.ParseClientFrame(b)
			if err != nil || f.Type != wire.TypePublish {
				continue
			}
			ct, _ := base64.StdEncoding.DecodeString(f.Publish.EncryptedMessage)
			status := fmt.Sprintf("bogus-%d-%s", i, strings.Repeat("s", 2000))
			if c.Write(ctx, websocket.MessageText, wire.PublishResultFrame(wire.PublishResult{ID: wire.MessageID(ct), Ref: f.Publish.Ref, Status: status})) != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	s := st.StartSidecar(t, a, st.Config(a, "ws"+strings.TrimPrefix(srv.URL, "http")+"/", t.TempDir()), st.Options())
	s.WaitRelay(sidecar.RelayConnected)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = s.Submit(b, st.Ciphertext("bogus", i, 100))
	}
	for _, id := range ids {
		m := s.WaitMessage(id, queue.HandedOff)
		if len(m.LastError) > 1024 {
			t.Errorf("last error of %d bytes, want the relay's status clipped", len(m.LastError))
		}
	}
	mfs, err := s.E.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "courier_fallbacks_total", "courier_publish_results_total":
			if len(mf.GetMetric()) > 3 {
				t.Errorf("%s has %d series after %d made-up statuses, want a bounded few", mf.GetName(), len(mf.GetMetric()), n)
			}
		}
	}
}

// Other peers' messages that arrive while anonymous and while the node is
// down, and reach the node only after a switch back to peer mode, are
// still not_for_node when it cannot open them: what they are depends on
// the subscription they came by, not on the mode in force when the node
// answers. Before, they became refused and were listed for attention.
func TestNotForNodeAcrossModeSwitch(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	a, b, twin := st.NewNode(t, "A"), st.NewNode(t, "B"), st.NewNode(t, twinOfA)
	cfg := anonymousConfig(a, r.URL(), t.TempDir())
	sa := st.StartSidecar(t, a, cfg, st.Options())
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	stw := st.StartSidecar(t, twin, st.Config(twin, r.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)
	stw.WaitRelay(sidecar.RelayConnected)

	arrived, release := a.Inbound.Hold() // A's node is stuck
	defer release()
	var ids []string
	for i := range 3 {
		ids = append(ids, sb.Submit(twin, st.Ciphertext("B to twin", i, 200)))
	}
	<-arrived
	st.Eventually(t, "A's inbox to hold the twin's messages", func() bool {
		s, err := sa.E.Status(context.Background(), 0)
		return err == nil && s.Inbox.Pending == 3
	})

	cfg.RelayIdentity = sidecar.IdentityPeer
	if err := sa.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	sa.WaitRelay(sidecar.RelayConnected)
	for _, id := range ids {
		a.Inbound.FailID(id, http.StatusUnprocessableEntity) // A's node cannot open them
	}
	release()
	var s sidecar.Status
	st.Eventually(t, "A's node to have answered for the twin's messages", func() bool {
		var err error
		s, err = sa.E.Status(context.Background(), 0)
		return err == nil && s.Inbox.Pending == 0
	})
	if s.Inbox.NotForNode != 3 || s.Inbox.Refused != 0 || len(s.Attention) != 0 {
		t.Errorf("inbox %+v, attention %d; want the 3 not_for_node, none refused or listed", s.Inbox, len(s.Attention))
	}
}

// The other way: a message received as the peer that the node refuses
// only after a switch to anonymous is still refused (a problem, listed),
// not hidden as not_for_node.
func TestRefusedAcrossModeSwitch(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	a, b := st.NewNode(t, "A"), st.NewNode(t, "B")
	cfg := st.Config(a, r.URL(), t.TempDir())
	sa := st.StartSidecar(t, a, cfg, st.Options())
	sb := st.StartSidecar(t, b, st.Config(b, r.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	sb.WaitRelay(sidecar.RelayConnected)

	arrived, release := a.Inbound.Hold()
	defer release()
	id := sb.Submit(a, st.Ciphertext("B to A", 0, 200))
	<-arrived
	cfg.RelayIdentity = sidecar.IdentityAnonymous
	if err := sa.E.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	sa.WaitRelay(sidecar.RelayConnected)
	a.Inbound.FailID(id, http.StatusUnprocessableEntity)
	release()
	var s sidecar.Status
	st.Eventually(t, "A's node to have answered", func() bool {
		var err error
		s, err = sa.E.Status(context.Background(), 0)
		return err == nil && s.Inbox.Pending == 0 && s.Inbox.Refused+s.Inbox.NotForNode+s.Inbox.Delivered == 1
	})
	if s.Inbox.Refused != 1 || len(s.Attention) != 1 {
		t.Errorf("inbox %+v, attention %d; want the message refused and listed", s.Inbox, len(s.Attention))
	}
}

// relay_proxy credentials the SOCKS5 client cannot send (RFC 1929: a user
// name of 1 to 255 bytes, a password of at most 255) are refused when the
// config is read, naming the key and never quoting the password. Before,
// they were taken, and every connection failed with "invalid
// username/password" from deep in the SOCKS5 client.
func TestRelayProxyCredentialsChecked(t *testing.T) {
	const secret = "pw-5e1f0a"
	for _, tc := range []struct{ name, proxy string }{
		{"long password", "socks5h://courier:" + secret + strings.Repeat("p", 300) + "@127.0.0.1:9050"},
		{"long user name", "socks5h://" + strings.Repeat("u", 300) + ":" + secret + "@127.0.0.1:9050"},
		{"password without a user name", "socks5h://:" + secret + "@127.0.0.1:9050"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := st.NewNode(t, "A")
			cfg := st.Config(a, "ws://127.0.0.1:1/", t.TempDir())
			cfg.RelayProxy = tc.proxy
			err := cfg.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), "relay_proxy") || strings.Contains(err.Error(), secret) || len(err.Error()) > 1024 {
				t.Errorf("error %.300q: want it to name relay_proxy, briefly, without the password", err)
			}
		})
	}
}
