package webclient_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"courier/internal/browsertest"
	"courier/relay/webclient"
	"courier/wire"
)

// testTimeout bounds a whole browser test: the browser is killed after it.
const testTimeout = 50 * time.Second

// serveClient serves the embedded client at /client/ of mux.
func serveClient(mux *http.ServeMux, fsys fs.FS) {
	mux.Handle("/client/", http.StripPrefix("/client/", http.FileServerFS(fsys)))
}

// newPeer returns a fresh Ed25519 identity as its Qm… and 12D3Koo… peer IDs.
func newPeer(t *testing.T) (qm, identity wire.PeerID) {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m := wire.MarshalPublicKey(pub)
	id, err := wire.IdentityPeerID(m)
	if err != nil {
		t.Fatal(err)
	}
	return wire.PeerIDFromPublicKey(m), id
}

// TestProtocolFunctionsMatchGo checks client.js, run by Chromium, against
// package wire: subscription keys of both peer ID forms, message IDs,
// base58 and base64.
func TestProtocolFunctionsMatchGo(t *testing.T) {
	ctx := browsertest.New(t, testTimeout)
	mux := http.NewServeMux()
	serveClient(mux, webclient.FS())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	browsertest.OpenClient(t, ctx, srv.URL)

	t.Run("vectors", func(t *testing.T) {
		const peer = "QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg"
		got := browsertest.Eval[[]string](t, ctx, fmt.Sprintf(`Promise.all([
			courier.lib.subscriptionKey(%[1]q),
			courier.lib.subscriptionKey(%[1]q, 16),
			courier.lib.subscriptionKey(%[1]q, 14),
		])`, peer))
		want := []string{
			"QmaGLQjHHdeZ3wKtKqHS9etMwSUDnckHnAYS6eqvAgp2Hf",
			"QmaGLQjHHdeZ3wKtKqHS9etMwSUDnckHnAYS6eqvAgp2Hf",
			"QmPZ9uGyBAJXjE7GXRHE9NG8CcuKei2z5PczmmuQnStaMu",
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("subscriptionKey(%s) at default, 16, 14 bits = %v, want %v", peer, got, want)
		}
	})

	t.Run("random peers", func(t *testing.T) {
		var peers, want []string
		for range 16 {
			qm, id := newPeer(t)
			for _, p := range []wire.PeerID{qm, id} {
				peers = append(peers, p.String())
				want = append(want, p.SubscriptionKey(wire.RelayPrefixBits))
			}
		}
		type result struct {
			Key       string
			RoundTrip string
		}
		got := browsertest.Eval[[]result](t, ctx, fmt.Sprintf(`Promise.all(%s.map(async (p) => ({
			Key: await courier.lib.subscriptionKey(p),
			RoundTrip: courier.lib.base58Encode(courier.lib.base58Decode(p)),
		})))`, browsertest.JS(t, peers)))
		if len(got) != len(peers) {
			t.Fatalf("got %d results for %d peers", len(got), len(peers))
		}
		for i, p := range peers {
			if got[i].Key != want[i] {
				t.Errorf("subscriptionKey(%s) = %s, want %s (wire)", p, got[i].Key, want[i])
			}
			if got[i].RoundTrip != p {
				t.Errorf("base58 round trip of %s = %s", p, got[i].RoundTrip)
			}
		}
		// Both forms of one peer share one key.
		if want[0] != want[1] {
			t.Errorf("wire gives different keys for %s and %s", peers[0], peers[1])
		}
	})

	t.Run("invalid peer IDs", func(t *testing.T) {
		bad := []string{
			"",
			"Qm0OIl", // not base58
			"QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUz", // length mismatch
			"5dqvXR93VnV1Grn96DBGdqEQAbJe1e",               // sha1 multihash
			"1111111111111111111111111111111111111111",     // identity of a non-Ed25519 key
		}
		got := browsertest.Eval[[]string](t, ctx, fmt.Sprintf(`Promise.all(%s.map((p) =>
			courier.lib.subscriptionKey(p).then((k) => "accepted: " + k, (e) => "")))`, browsertest.JS(t, bad)))
		for i, g := range got {
			if g != "" {
				t.Errorf("subscriptionKey(%q) %s, want an error", bad[i], g)
			}
			if _, err := wire.ParsePeerID(bad[i]); err == nil {
				t.Errorf("wire accepts %q: the test case is wrong", bad[i])
			}
		}
	})

	t.Run("message IDs and base64", func(t *testing.T) {
		var inputs []string
		var wantIDs []string
		for _, n := range []int{0, 1, 2, 3, 55, 64, 1000, 100_000} {
			b := make([]byte, n)
			rand.Read(b)
			inputs = append(inputs, base64.StdEncoding.EncodeToString(b))
			wantIDs = append(wantIDs, wire.MessageID(b))
		}
		type result struct {
			ID     string
			Base64 string
		}
		got := browsertest.Eval[[]result](t, ctx, fmt.Sprintf(`Promise.all(%s.map(async (s) => {
			const b = courier.lib.base64ToBytes(s);
			return {ID: await courier.lib.messageID(b), Base64: courier.lib.bytesToBase64(b)};
		}))`, browsertest.JS(t, inputs)))
		for i := range inputs {
			if got[i].ID != wantIDs[i] {
				t.Errorf("messageID of input %d = %s, want %s", i, got[i].ID, wantIDs[i])
			}
			if got[i].Base64 != inputs[i] {
				t.Errorf("base64 round trip of input %d differs", i)
			}
		}
	})

	t.Run("reconnect backoff", func(t *testing.T) {
		// attempt → [min, max] in ms: doubling from 500, capped at 30 s, jittered in the upper half.
		got := browsertest.Eval[[][]int](t, ctx, `[0, 1, 2, 6, 7, 40].map((a) => [
			courier.lib.backoff(a, {random: () => 0}), courier.lib.backoff(a, {random: () => 0.999999})])`)
		want := [][]int{{250, 500}, {500, 1000}, {1000, 2000}, {16000, 32000}, {15000, 30000}, {15000, 30000}}
		want[3] = []int{15000, 30000} // 500·2^6 = 32 s is over the cap
		for i := range want {
			if got[i][0] != want[i][0] || got[i][1] != want[i][1] {
				t.Errorf("backoff range %d: %v, want %v", i, got[i], want[i])
			}
		}
	})

	t.Run("OpenBazaar interop", func(t *testing.T) { testOpenBazaarInterop(t, ctx) })
}
