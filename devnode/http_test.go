package devnode

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"courier/wire"
)

// serve starts n's handler on a test server.
func serve(t *testing.T, n *Node) string {
	t.Helper()
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

func newNode(t *testing.T, name string, opts Options) *Node {
	t.Helper()
	opts.PrivateKey = testKey(name)
	n, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// call sends a JSON request and decodes the JSON answer into out (if not nil).
func call(t *testing.T, method, url string, body any, out any) (int, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, ok := body.(string)
		if !ok {
			raw, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			b = string(raw)
		}
		rd = strings.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); len(raw) > 0 && ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, url, ct)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: answer %s: %v", method, url, raw, err)
		}
	}
	return resp.StatusCode, resp.Header
}

type errBody struct {
	Error string `json:"error"`
}

func inboundBody(ct []byte, path string) map[string]any {
	return map[string]any{
		"id":          wire.MessageID(ct),
		"ciphertext":  base64.StdEncoding.EncodeToString(ct),
		"path":        path,
		"received_at": "2025-01-02T03:04:05Z",
	}
}

func TestSignEndpoint(t *testing.T) {
	n := newNode(t, "bob", Options{})
	url := serve(t, n)
	for _, content := range []string{"courier-auth:v1:relay.example.org:bm9uY2U=", "", "ünï/cödé?&="} {
		var got map[string]string
		status, _ := call(t, "POST", url+"/ob/signmessage", map[string]string{"content": content}, &got)
		if status != http.StatusOK || len(got) != 3 {
			t.Fatalf("sign %q: %d %v", content, status, got)
		}
		keyBytes, err := hex.DecodeString(got["pubkey"])
		if err != nil {
			t.Fatal(err)
		}
		pub, err := wire.UnmarshalPublicKey(keyBytes)
		if err != nil {
			t.Fatalf("pubkey %s: %v", got["pubkey"], err)
		}
		sig, _ := hex.DecodeString(got["signature"])
		if !ed25519.Verify(pub, []byte(content), sig) {
			t.Errorf("signature of %q does not verify", content)
		}
		if got["peerId"] != wire.PeerIDFromPublicKey(keyBytes).String() || got["peerId"] != n.PeerID() {
			t.Errorf("peerId %s, want %s", got["peerId"], n.PeerID())
		}
		// The same check the relay makes on a level-2 subscribe.
		if content != "" && strings.HasPrefix(content, "courier-auth") {
			peer, _ := wire.ParsePeerID(got["peerId"])
			sub := wire.Subscribe{UserID: got["peerId"], SubscriptionKey: peer.SubscriptionKey(wire.RelayPrefixBits),
				PubKey: got["pubkey"], Signature: got["signature"]}
			if _, err := wire.VerifyAuth(sub, "relay.example.org", "bm9uY2U="); err != nil {
				t.Errorf("VerifyAuth: %v", err)
			}
		}
	}
	if status, _ := call(t, "POST", url+"/ob/signmessage", "{", nil); status != http.StatusBadRequest {
		t.Errorf("bad JSON: %d", status)
	}
}

func TestInboundEndpoint(t *testing.T) {
	bob := newNode(t, "bob", Options{})
	url := serve(t, bob)
	alice := testKey("alice")
	ct, err := Seal(bob.PublicKey(), alice, "hello bob")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		var got countAnswer
		if status, _ := call(t, "POST", url+"/courier/inbound", inboundBody(ct, "INDIRECT"), &got); status != http.StatusOK || got.Count != i {
			t.Fatalf("delivery %d: %d %+v", i, status, got)
		}
	}
	var list struct{ Messages []Received }
	call(t, "GET", url+"/devnode/received", nil, &list)
	if len(list.Messages) != 1 {
		t.Fatalf("received %+v, want one message", list.Messages)
	}
	r := list.Messages[0]
	if r.ID != wire.MessageID(ct) || r.Sender != PeerID(alice) || r.Text != "hello bob" || r.Count != 3 ||
		r.TypeName != "CHAT" || r.Path != "INDIRECT" || r.ReceivedAt != "2025-01-02T03:04:05Z" || r.ChatMessageID == "" ||
		r.SenderPubKey != hex.EncodeToString(wire.MarshalPublicKey(pubOf(alice))) {
		t.Errorf("received %+v", r)
	}

	toEve, _ := Seal(pubOf(testKey("eve")), alice, "not for bob")
	wrongID := inboundBody(ct, "INDIRECT")
	wrongID["id"] = wire.MessageID([]byte("other"))
	bad := []struct {
		name string
		body any
		want int
	}{
		{"sealed to someone else", inboundBody(toEve, "INDIRECT"), http.StatusUnprocessableEntity},
		{"id is not the ciphertext's", wrongID, http.StatusBadRequest},
		{"ciphertext not base64", map[string]any{"id": "x", "ciphertext": "%%%"}, http.StatusBadRequest},
		{"no ciphertext", map[string]any{"id": "x"}, http.StatusBadRequest},
		{"not JSON", "nope", http.StatusBadRequest},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			var e errBody
			if status, _ := call(t, "POST", url+"/courier/inbound", tt.body, &e); status != tt.want || e.Error == "" {
				t.Errorf("%d %+v, want %d with an error", status, e, tt.want)
			}
		})
	}
	if got := bob.Received(); len(got) != 1 {
		t.Errorf("rejected messages were recorded: %+v", got)
	}
	if s := bob.Stats()[EndpointInbound]; s.Calls != 8 || s.OK != 3 || s.Rejected != 5 || s.Injected != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestInboundConcurrentDuplicates(t *testing.T) {
	bob := newNode(t, "bob", Options{})
	ct, _ := Seal(bob.PublicKey(), testKey("alice"), "once")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := bob.Deliver(wire.MessageID(ct), ct, "INDIRECT", ""); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := bob.Received(); len(got) != 1 || got[0].Count != 8 {
		t.Errorf("received %+v, want one message counted 8 times", got)
	}
}

func TestOfflineEndpoint(t *testing.T) {
	n := newNode(t, "alice", Options{})
	url := serve(t, n)
	ct, _ := Seal(pubOf(testKey("bob")), testKey("alice"), "via DHT")
	body := map[string]string{"recipient": PeerID(testKey("bob")), "ciphertext": base64.StdEncoding.EncodeToString(ct)}
	for i := 1; i <= 2; i++ {
		var got countAnswer
		if status, _ := call(t, "POST", url+"/courier/offline", body, &got); status != http.StatusOK || got.Count != i || got.ID != wire.MessageID(ct) {
			t.Fatalf("hand-off %d: %d %+v", i, status, got)
		}
	}
	var list struct{ Messages []Offline }
	call(t, "GET", url+"/devnode/offline", nil, &list)
	if len(list.Messages) != 1 || list.Messages[0].Count != 2 || !bytes.Equal(list.Messages[0].Ciphertext, ct) ||
		list.Messages[0].Recipient != body["recipient"] {
		t.Fatalf("offline %+v", list.Messages)
	}
	// The recorded ciphertext is the message: the recipient opens it.
	if m, err := Open(list.Messages[0].Ciphertext, testKey("bob")); err != nil || m.Text != "via DHT" {
		t.Errorf("open recorded: %+v %v", m, err)
	}
	for _, b := range []map[string]string{
		{"recipient": "nope", "ciphertext": body["ciphertext"]},
		{"recipient": body["recipient"], "ciphertext": ""},
	} {
		if status, _ := call(t, "POST", url+"/courier/offline", b, nil); status != http.StatusBadRequest {
			t.Errorf("%v: %d, want 400", b, status)
		}
	}
}

func TestFaultInjection(t *testing.T) {
	alice := testKey("alice")
	tests := []struct {
		endpoint string
		fail     string // the /devnode/fail body
		failures int    // how many requests fail before recovery; -1: until cleared
		status   int
	}{
		{EndpointInbound, `{"endpoint":"inbound","count":2}`, 2, 503},
		{EndpointOffline, `{"endpoint":"offline","count":1,"status":500,"retry_after":7}`, 1, 500},
		{EndpointSign, `{"endpoint":"sign","status":429}`, -1, 429},
		{EndpointInbound, `{"endpoint":"inbound"}`, -1, 503},
	}
	for _, tt := range tests {
		t.Run(tt.fail, func(t *testing.T) {
			n := newNode(t, "bob", Options{})
			url := serve(t, n)
			ct, _ := Seal(n.PublicKey(), alice, "x")
			req := map[string]string{
				EndpointInbound: "/courier/inbound",
				EndpointOffline: "/courier/offline",
				EndpointSign:    "/ob/signmessage",
			}[tt.endpoint]
			var body any = map[string]string{"content": "c"}
			switch tt.endpoint {
			case EndpointInbound:
				body = inboundBody(ct, "INDIRECT")
			case EndpointOffline:
				body = map[string]string{"recipient": n.PeerID(), "ciphertext": base64.StdEncoding.EncodeToString(ct)}
			}
			var faults struct{ Faults map[string]Fault }
			if status, _ := call(t, "POST", url+"/devnode/fail", tt.fail, &faults); status != http.StatusOK || len(faults.Faults) != 1 {
				t.Fatalf("set fault: %d %+v", status, faults)
			}
			failures := tt.failures
			if failures < 0 {
				failures = 3 // fails until cleared: try a few, then clear
			}
			for i := range failures {
				var e errBody
				status, h := call(t, "POST", url+req, body, &e)
				if status != tt.status || !strings.Contains(e.Error, "injected") {
					t.Fatalf("request %d: %d %+v, want injected %d", i, status, e, tt.status)
				}
				if strings.Contains(tt.fail, "retry_after") && h.Get("Retry-After") != "7" {
					t.Errorf("Retry-After %q", h.Get("Retry-After"))
				}
			}
			if tt.failures < 0 {
				if status, _ := call(t, "POST", url+"/devnode/fail", `{"endpoint":"`+tt.endpoint+`","count":0}`, nil); status != http.StatusOK {
					t.Fatalf("clear: %d", status)
				}
			}
			if status, _ := call(t, "POST", url+req, body, nil); status != http.StatusOK {
				t.Errorf("after the faults: %d, want recovery", status)
			}
			if s := n.Stats()[tt.endpoint]; s.Injected != failures || s.OK != 1 || s.Calls != failures+1 {
				t.Errorf("stats %+v", s)
			}
			if f := n.Faults(); len(f) != 0 {
				t.Errorf("faults left: %+v", f)
			}
		})
	}
	n := newNode(t, "bob", Options{})
	url := serve(t, n)
	for _, bad := range []string{`{"endpoint":"nope","count":1}`, `{"endpoint":"sign","count":-1}`, `{"endpoint":"sign","status":200}`, `{"endpoint":"sign","cuont":1}`} {
		if status, _ := call(t, "POST", url+"/devnode/fail", bad, nil); status != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, status)
		}
	}
}

// fakeSidecar is the sidecar's local API as far as devnode uses it. Messages
// go "queued", then "delivered" once asked about; deliver, when set, gets each
// new message (it plays relay and the recipient's sidecar).
type fakeSidecar struct {
	mu      sync.Mutex
	states  map[string]string
	posts   int
	deliver func(recipient string, ct []byte)
	status  int // when set, POST answers this with an error
}

func (f *fakeSidecar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Method == "POST" && r.URL.Path == "/v1/messages" {
		f.posts++
		if f.status != 0 {
			writeError(w, f.status, "sidecar is unhappy")
			return
		}
		var req struct{ Recipient, Ciphertext string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeError(w, 400, err.Error())
			return
		}
		ct, err := base64.StdEncoding.DecodeString(req.Ciphertext)
		if err != nil {
			writeError(w, 400, err.Error())
			return
		}
		id := wire.MessageID(ct)
		if s, ok := f.states[id]; ok {
			writeJSON(w, 200, map[string]string{"id": id, "state": s})
			return
		}
		f.states[id] = "queued"
		if f.deliver != nil {
			f.deliver(req.Recipient, ct)
		}
		writeJSON(w, 202, map[string]string{"id": id, "state": "queued"})
		return
	}
	if id, ok := strings.CutPrefix(r.URL.Path, "/v1/messages/"); ok && r.Method == "GET" {
		s, ok := f.states[id]
		if !ok {
			writeError(w, 404, "no such message")
			return
		}
		if s == "queued" {
			f.states[id] = "delivered"
		}
		writeJSON(w, 200, map[string]any{"id": id, "state": s, "path": "INDIRECT", "attempts": 1})
		return
	}
	writeError(w, 404, "no route")
}

func startSidecar(t *testing.T, f *fakeSidecar) string {
	f.states = map[string]string{}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestSendEndToEnd: Alice's devnode sends through a sidecar that hands the
// ciphertext to Bob's inbound endpoint; Bob opens it and sees Alice.
func TestSendEndToEnd(t *testing.T) {
	bob := newNode(t, "bob", Options{})
	bobURL := serve(t, bob)
	sc := &fakeSidecar{}
	sc.deliver = func(recipient string, ct []byte) {
		if p, err := wire.ParsePeerID(recipient); err != nil || p.Canonical() != bob.PeerID() {
			t.Errorf("sidecar got recipient %s, want %s", recipient, bob.PeerID())
		}
		b, _ := json.Marshal(inboundBody(ct, "INDIRECT"))
		resp, err := http.Post(bobURL+"/courier/inbound", "application/json", bytes.NewReader(b))
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
	}
	alice := newNode(t, "alice", Options{SidecarURL: startSidecar(t, sc) + "/", PollInterval: time.Millisecond})
	aliceURL := serve(t, alice)

	var id struct {
		PeerID         string `json:"peer_id"`
		IdentityPeerID string `json:"identity_peer_id"`
		PubKey         string `json:"pubkey"`
	}
	call(t, "GET", bobURL+"/devnode/id", nil, &id)
	if id.PeerID != bob.PeerID() || !strings.HasPrefix(id.IdentityPeerID, "12D3Koo") || id.PubKey != bob.PubKeyHex() {
		t.Fatalf("/devnode/id = %+v", id)
	}

	var res struct {
		ID, State, Recipient string
		ChatMessageID        string `json:"chat_message_id"`
		SidecarStatus        int    `json:"sidecar_status"`
		Final                bool
	}
	send := map[string]string{"to_peer": id.PeerID, "to_pubkey": id.PubKey, "text": "hello from alice", "wait": "10s"}
	if status, _ := call(t, "POST", aliceURL+"/devnode/send", send, &res); status != http.StatusOK {
		t.Fatalf("send: %d %+v", status, res)
	}
	if res.State != "delivered" || !res.Final || res.SidecarStatus != 202 || !wire.ValidMessageID(res.ID) || res.Recipient != bob.PeerID() {
		t.Errorf("send result %+v", res)
	}
	var list struct{ Messages []Received }
	call(t, "GET", bobURL+"/devnode/received?min=1&wait=10s", nil, &list)
	if len(list.Messages) != 1 || list.Messages[0].ID != res.ID || list.Messages[0].Sender != alice.PeerID() ||
		list.Messages[0].Text != "hello from alice" || list.Messages[0].ChatMessageID != res.ChatMessageID {
		t.Errorf("bob received %+v", list.Messages)
	}

	// By 12D3Koo… peer ID alone, without waiting.
	delete(send, "to_pubkey")
	delete(send, "wait")
	send["to_peer"] = id.IdentityPeerID
	if status, _ := call(t, "POST", aliceURL+"/devnode/send", send, &res); status != http.StatusOK || res.State != "queued" || res.Final {
		t.Errorf("send by identity peer ID: %d %+v", status, res)
	}
	// And the library call, polling to a final state.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := alice.WaitState(ctx, res.ID); err != nil || s.State != "delivered" || s.Path != "INDIRECT" {
		t.Errorf("WaitState = %+v, %v", s, err)
	}
}

func TestSendErrors(t *testing.T) {
	bob := testKey("bob")
	noSidecar := serve(t, newNode(t, "alice", Options{}))
	unhappy := serve(t, newNode(t, "alice", Options{SidecarURL: startSidecar(t, &fakeSidecar{status: 500})}))
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	unreachable := serve(t, newNode(t, "alice", Options{SidecarURL: down.URL}))
	good := map[string]string{"to_pubkey": hex.EncodeToString(pubOf(bob)), "text": "x"}
	tests := []struct {
		name string
		url  string
		body any
		want int
	}{
		{"no sidecar", noSidecar, good, http.StatusServiceUnavailable},
		{"sidecar refuses", unhappy, good, http.StatusBadGateway},
		{"sidecar down", unreachable, good, http.StatusBadGateway},
		{"Qm without key", unhappy, map[string]string{"to_peer": PeerID(bob), "text": "x"}, http.StatusBadRequest},
		{"unknown field", unhappy, `{"to_pubkey":"00","txt":"x"}`, http.StatusBadRequest},
		{"bad wait", unhappy, map[string]string{"to_pubkey": good["to_pubkey"], "wait": "soon"}, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e errBody
			if status, _ := call(t, "POST", tt.url+"/devnode/send", tt.body, &e); status != tt.want || e.Error == "" {
				t.Errorf("%d %+v, want %d with an error", status, e, tt.want)
			}
		})
	}
	if _, err := New(Options{SidecarURL: "127.0.0.1:4100"}); err == nil {
		t.Error("New accepted a sidecar URL without scheme")
	}
}

func TestLongPoll(t *testing.T) {
	bob := newNode(t, "bob", Options{})
	url := serve(t, bob)
	// Nothing arrives: the wait ends with what there is.
	var list struct{ Messages []Received }
	if status, _ := call(t, "GET", url+"/devnode/received?min=1&wait=20ms", nil, &list); status != 200 || len(list.Messages) != 0 {
		t.Fatalf("%d %+v", status, list)
	}
	done := make(chan []Received)
	go func() {
		var l struct{ Messages []Received }
		call(t, "GET", url+"/devnode/received?min=1&wait=30s", nil, &l)
		done <- l.Messages
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ct, _ := Seal(bob.PublicKey(), testKey("alice"), "wake up")
	// Whether the poll starts before or after this delivery, it answers.
	if _, err := bob.Deliver(wire.MessageID(ct), ct, "INDIRECT", ""); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if len(got) != 1 || got[0].Text != "wake up" {
			t.Errorf("long poll got %+v", got)
		}
	case <-ctx.Done():
		t.Fatal("long poll did not return")
	}
	for _, q := range []string{"min=x", "wait=-1s", "wait=later"} {
		if status, _ := call(t, "GET", url+"/devnode/offline?"+q, nil, nil); status != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", q, status)
		}
	}
}

func TestResetAndNotFound(t *testing.T) {
	n := newNode(t, "bob", Options{})
	url := serve(t, n)
	ct, _ := Seal(n.PublicKey(), testKey("alice"), "x")
	n.Deliver(wire.MessageID(ct), ct, "OFFLINE", "")
	n.HandOff(n.PeerID(), ct)
	n.SetFault(EndpointSign, Fault{Remaining: 1})
	if status, _ := call(t, "POST", url+"/devnode/reset", nil, nil); status != http.StatusNoContent {
		t.Fatalf("reset: %d", status)
	}
	if len(n.Received()) != 0 || len(n.Offline()) != 0 || len(n.Faults()) != 0 || n.Stats()[EndpointSign].Calls != 0 {
		t.Error("reset left state behind")
	}
	var e errBody
	if status, _ := call(t, "GET", url+"/nope", nil, &e); status != http.StatusNotFound || e.Error == "" {
		t.Errorf("unknown route: %d %+v", status, e)
	}
}

// A node started before its sidecar is pointed at it later.
func TestSetSidecarAtRunTime(t *testing.T) {
	bob := testKey("bob")
	sc := &fakeSidecar{}
	sc.deliver = func(string, []byte) {}
	url := serve(t, newNode(t, "alice", Options{}))
	send := map[string]string{"to_pubkey": hex.EncodeToString(pubOf(bob)), "text": "x"}
	var e errBody
	if status, _ := call(t, "POST", url+"/devnode/send", send, &e); status != http.StatusServiceUnavailable {
		t.Fatalf("send before a sidecar is set: %d, want 503", status)
	}
	if status, _ := call(t, "POST", url+"/devnode/sidecar", map[string]string{"url": "127.0.0.1:1"}, &e); status != http.StatusBadRequest || !strings.Contains(e.Error, "url") {
		t.Errorf("bad sidecar URL: %d %+v, want 400 naming url", status, e)
	}
	if status, _ := call(t, "POST", url+"/devnode/sidecar", map[string]string{"url": startSidecar(t, sc)}, nil); status != http.StatusOK {
		t.Fatalf("set sidecar: %d", status)
	}
	var res struct{ ID, State string }
	if status, _ := call(t, "POST", url+"/devnode/send", send, &res); status != http.StatusOK || !wire.ValidMessageID(res.ID) {
		t.Errorf("send after setting the sidecar: %d %+v", status, res)
	}
}
