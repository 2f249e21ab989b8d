package webclient_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"courier/relay/webclient"
	"courier/wire"
)

// testTimeout bounds a whole browser test: the browser is killed after it.
const testTimeout = 50 * time.Second

// newBrowser starts a headless Chromium with a fresh profile and returns a
// chromedp context for one tab in it. The browser is stopped (and waited
// for) before the profile directory is removed.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	execPath, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed: apt-get install chromium")
	}
	profile := t.TempDir() // registered first, so removed after the browser stopped

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	allocCtx, allocCancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(execPath),
		chromedp.Headless,
		chromedp.NoSandbox, // the tests run as root in CI
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1100, 900),
	)
	tabCtx, tabCancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		tabCancel()   // closes the browser gracefully
		allocCancel() // waits for the process to exit
		cancel()
	})
	return tabCtx
}

// serveClient serves the embedded client at /client/ of mux.
func serveClient(mux *http.ServeMux, fsys fs.FS) {
	mux.Handle("/client/", http.StripPrefix("/client/", http.FileServerFS(fsys)))
}

// openPage loads the client page and waits until its module has run.
func openPage(t *testing.T, ctx context.Context, baseURL string) {
	t.Helper()
	err := chromedp.Do(ctx,
		chromedp.Navigate(baseURL+"/client/"),
		poll(`window.courier && window.courier.ready`),
	)
	if err != nil {
		t.Fatalf("open %s/client/: %v", baseURL, err)
	}
}

// poll waits, in the page, until the JavaScript expression is truthy.
func poll(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))
}

// eval evaluates a JavaScript expression in the page, awaiting a promise,
// and decodes its JSON value into T.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %.120s: %v", expr, err)
	}
	return v
}

// jsValue encodes v as a JavaScript literal.
func jsValue(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
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
	ctx := newBrowser(t)
	mux := http.NewServeMux()
	serveClient(mux, webclient.FS())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	openPage(t, ctx, srv.URL)

	t.Run("vectors", func(t *testing.T) {
		const peer = "QmaSAmPPynrWfz1R8XvRm1GX6ghzPze6XSZCov6fWWUzSg"
		got := eval[[]string](t, ctx, fmt.Sprintf(`Promise.all([
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
		got := eval[[]result](t, ctx, fmt.Sprintf(`Promise.all(%s.map(async (p) => ({
			Key: await courier.lib.subscriptionKey(p),
			RoundTrip: courier.lib.base58Encode(courier.lib.base58Decode(p)),
		})))`, jsValue(t, peers)))
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
		got := eval[[]string](t, ctx, fmt.Sprintf(`Promise.all(%s.map((p) =>
			courier.lib.subscriptionKey(p).then((k) => "accepted: " + k, (e) => "")))`, jsValue(t, bad)))
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
		got := eval[[]result](t, ctx, fmt.Sprintf(`Promise.all(%s.map(async (s) => {
			const b = courier.lib.base64ToBytes(s);
			return {ID: await courier.lib.messageID(b), Base64: courier.lib.bytesToBase64(b)};
		}))`, jsValue(t, inputs)))
		for i := range inputs {
			if got[i].ID != wantIDs[i] {
				t.Errorf("messageID of input %d = %s, want %s", i, got[i].ID, wantIDs[i])
			}
			if got[i].Base64 != inputs[i] {
				t.Errorf("base64 round trip of input %d differs", i)
			}
		}
	})
}
