package devnode

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"courier/wire"
)

func offlineBody(recipient string, ct []byte) map[string]string {
	return map[string]string{"recipient": recipient, "ciphertext": base64.StdEncoding.EncodeToString(ct)}
}

// A message handed to alice's OFFLINE endpoint reaches bob, a node without
// a sidecar, at bob's poll and not before; it is opened and checked there;
// copies are dropped by ID; what will not open is dropped and counted.
func TestOfflineNetwork(t *testing.T) {
	dir := t.TempDir()
	alice := newNode(t, "alice", Options{OfflineDir: dir})
	bob := newNode(t, "bob", Options{OfflineDir: dir, OfflinePoll: time.Hour}) // polled by hand below
	aliceURL := serve(t, alice)

	ct, err := alice.Seal(bob.PublicKey(), "the slow way")
	if err != nil {
		t.Fatal(err)
	}
	id := wire.MessageID(ct)
	var got countAnswer
	if status, _ := call(t, "POST", aliceURL+"/courier/offline", offlineBody(bob.PeerID(), ct), &got); status != http.StatusOK || got.ID != id {
		t.Fatalf("OFFLINE publish: %d %+v", status, got)
	}
	// Answered 2xx: the message is on the OFFLINE network, and bob has not
	// looked yet, so he does not have it.
	if !bob.OfflineStore().Pending(bob.PeerID(), id) {
		t.Fatal("the message is not in the OFFLINE store after a 2xx")
	}
	if r := bob.Received(); len(r) != 0 {
		t.Fatalf("bob has %+v before his poll", r)
	}

	taken, err := bob.PollOffline()
	if err != nil || taken != 1 {
		t.Fatalf("poll: %d, %v; want 1 taken", taken, err)
	}
	r := bob.Received()
	if len(r) != 1 || r[0].ID != id || r[0].Text != "the slow way" || r[0].Sender != alice.PeerID() ||
		r[0].Path != "OFFLINE" || r[0].Count != 0 || r[0].OfflineCount != 1 || r[0].PublishedAt.IsZero() {
		t.Fatalf("bob received %+v", r)
	}
	if bob.OfflineStore().Pending(bob.PeerID(), id) {
		t.Error("a message taken is still in the store")
	}
	if taken, _ := bob.PollOffline(); taken != 0 || len(bob.Received()) != 1 {
		t.Errorf("a second poll took %d more", taken)
	}

	t.Log("a copy published again, under the 12D3Koo… form of bob's ID, is dropped by its ID")
	ident, err := wire.IdentityPeerID(bob.MarshalledPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if status, _ := call(t, "POST", aliceURL+"/courier/offline", offlineBody(ident.String(), ct), nil); status != http.StatusOK {
		t.Fatalf("second publish: %d", status)
	}
	if taken, err := bob.PollOffline(); taken != 0 || err != nil {
		t.Errorf("poll of a duplicate took %d, %v", taken, err)
	}
	if r := bob.Received(); len(r) != 1 || r[0].OfflineCount != 2 {
		t.Errorf("after a duplicate: %+v", r)
	}
	// The sidecar handing in the same message later changes nothing either:
	// the node has it; Count counts the hand-ins.
	if rec, err := bob.Deliver(id, ct, "INDIRECT", ""); err != nil || rec.Count != 1 || rec.Path != "OFFLINE" {
		t.Errorf("inbound copy: %+v %v", rec, err)
	}

	t.Log("a message whose signature does not verify is dropped, not shown")
	env := signEnvelope(testKey("mallory"), encodeMessage(Message{Type: TypeChat, Chat: NewChat("forged", "", time.Now())}))
	env.Signature[0] ^= 1
	bad, err := Encrypt(bob.PublicKey(), env.marshal())
	if err != nil {
		t.Fatal(err)
	}
	notForBob, _ := alice.Seal(alice.PublicKey(), "for alice, filed under bob")
	for _, c := range [][]byte{bad, notForBob} {
		if _, err := alice.OfflineStore().Publish(bob.PeerID(), c); err != nil {
			t.Fatal(err)
		}
	}
	if taken, err := bob.PollOffline(); taken != 0 || err != nil {
		t.Errorf("poll of unreadable messages took %d, %v", taken, err)
	}
	if s := bob.PollStats(); s.Unreadable != 2 || s.Duplicates != 1 || s.Taken != 1 || s.Polls != 4 {
		t.Errorf("poll stats %+v", s)
	}
	if len(bob.Received()) != 1 {
		t.Errorf("bob shows %d messages, want only the first", len(bob.Received()))
	}

	t.Log("a store that cannot be written: the OFFLINE endpoint says so, 503, nothing recorded")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	other, _ := alice.Seal(bob.PublicKey(), "lost?")
	var e errBody
	if status, _ := call(t, "POST", aliceURL+"/courier/offline", offlineBody(bob.PeerID(), other), &e); status != http.StatusServiceUnavailable || e.Error == "" {
		t.Errorf("publish into a broken store: %d %q, want 503", status, e.Error)
	}
	if o := alice.Offline(); len(o) != 1 || o[0].Count != 2 {
		t.Errorf("alice recorded %+v, want the one message handed off twice", o)
	}
}

// With a short interval, the poll loop finds the message by itself, with
// the OFFLINE path's delay, and stops when told to.
func TestOfflinePollLoop(t *testing.T) {
	dir := t.TempDir()
	alice := newNode(t, "alice", Options{OfflineDir: dir})
	bob := newNode(t, "bob", Options{OfflineDir: dir, OfflinePoll: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		bob.RunOfflinePoll(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()

	ct, _ := alice.Seal(bob.PublicKey(), "polled")
	if _, err := alice.OfflineStore().Publish(bob.PeerID(), ct); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	r, err := bob.WaitReceived(wctx, 1)
	if err != nil {
		t.Fatalf("bob never polled the message in: %v (stats %+v)", err, bob.PollStats())
	}
	if r[0].Text != "polled" || r[0].Path != "OFFLINE" || r[0].FirstSeen.Before(r[0].PublishedAt) {
		t.Errorf("received %+v", r[0])
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("RunOfflinePoll did not return after its context ended")
	}
}

func TestOfflineStoreRefuses(t *testing.T) {
	if _, err := OpenOfflineStore(""); err == nil {
		t.Error("a store without a directory opened")
	}
	st, err := OpenOfflineStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Publish("not a peer", []byte("x")); err == nil {
		t.Error("publish to a bad peer ID accepted")
	}
	if err := st.Remove(PeerID(testKey("bob")), "../../etc/passwd"); err == nil {
		t.Error("remove of a path that is not a message ID accepted")
	}
	// A stray file, or one whose content is not its name's hash, is skipped.
	bob := PeerID(testKey("bob"))
	if _, err := st.Publish(bob, []byte("real")); err != nil {
		t.Fatal(err)
	}
	peerDir := filepath.Join(st.Dir(), bob)
	os.WriteFile(filepath.Join(peerDir, "notes.txt"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(peerDir, wire.MessageID([]byte("a"))), []byte("b"), 0o644)
	got, err := st.Fetch(bob, 1<<20)
	if err != nil || len(got) != 1 || string(got[0].Ciphertext) != "real" {
		t.Errorf("fetch: %+v %v", got, err)
	}
	n := newNode(t, "carol", Options{})
	if _, err := n.PollOffline(); !errors.Is(err, ErrNoOfflineStore) {
		t.Errorf("poll without a store: %v", err)
	}
}
