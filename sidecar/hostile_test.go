package sidecar_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	_ "github.com/mattn/go-sqlite3"

	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
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
