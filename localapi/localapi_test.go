package localapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"courier/localapi"
	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
	"courier/wire"
)

// api is the real local API on a running engine.
type api struct {
	t    *testing.T
	url  string
	srv  *localapi.Server
	s    *st.Sidecar
	node *st.Node
}

// startAPI runs an engine for a new node (no relay unless relayURL is set,
// no inbound endpoint: the node polls) and the API in front of it.
func startAPI(t *testing.T, token, relayURL string) *api {
	t.Helper()
	return startAPIWith(t, token, relayURL, nil)
}

// startAPIWith is startAPI with the Server adjusted by set before it serves.
func startAPIWith(t *testing.T, token, relayURL string, set func(*localapi.Server)) *api {
	t.Helper()
	n := st.NewNode(t, "api")
	cfg := st.Config(n, relayURL, t.TempDir())
	cfg.Node.InboundURL = ""
	cfg.API.Token = token
	s := st.StartSidecar(t, n, cfg, st.Options())
	srv := localapi.New(s.E, token, st.Logger())
	if set != nil {
		set(srv)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return &api{t: t, url: hs.URL, srv: srv, s: s, node: n}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body, failing the test unless it is JSON.
func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("body is not a JSON object (%v): %q", err, r.body)
	}
	return v
}

func (a *api) do(method, path, body string, header map[string]string) response {
	a.t.Helper()
	req, err := http.NewRequest(method, a.url+path, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

func postBody(recipient, ciphertext string) string {
	b, _ := json.Marshal(map[string]string{"recipient": recipient, "ciphertext": ciphertext})
	return string(b)
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func TestPostThenGetMessage(t *testing.T) {
	a := startAPI(t, "", "")
	to := st.NewNode(t, "recipient").Peer.String()
	ct := []byte("an opaque ciphertext")
	id := wire.MessageID(ct)

	r := a.do("POST", "/v1/messages", postBody(to, b64(ct)), nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST = %d %s, want 202", r.status, r.body)
	}
	if v := r.json(t); v["id"] != id || v["state"] != "queued" {
		t.Errorf("POST answered %v, want id %s, state queued", v, id)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}

	// The same message again: known, 200 with its current state.
	r = a.do("POST", "/v1/messages", postBody(to, b64(ct)), nil)
	if v := r.json(t); r.status != http.StatusOK || v["id"] != id || v["state"] == "" {
		t.Errorf("repeat POST = %d %v, want 200 with the current state", r.status, v)
	}

	var v map[string]any
	st.Eventually(t, "the message to be handed off", func() bool {
		r = a.do("GET", "/v1/messages/"+id, "", nil)
		if r.status != http.StatusOK {
			t.Fatalf("GET = %d %s", r.status, r.body)
		}
		v = r.json(t)
		return v["state"] == string(queue.HandedOff)
	})
	for _, k := range []string{"id", "recipient", "state", "path", "attempts", "created_at", "updated_at", "last_error"} {
		if _, ok := v[k]; !ok {
			t.Errorf("GET lacks %q: %v", k, v)
		}
	}
	if v["id"] != id || v["recipient"] != to || v["path"] != "OFFLINE" || v["attempts"] != 1.0 || v["last_error"] != "no relay configured" {
		t.Errorf("GET = %v", v)
	}
	for _, k := range []string{"created_at", "updated_at"} {
		if _, err := time.Parse(time.RFC3339Nano, v[k].(string)); err != nil {
			t.Errorf("%s = %v: %v", k, v[k], err)
		}
	}
	if got := a.node.Offline.AcceptedIDs(); len(got) != 1 || got[id] != 1 {
		t.Errorf("OFFLINE endpoint got %v, want the message once", got)
	}
}

// Every bad input gets a 4xx with a JSON error that names what is wrong.
func TestBadInput(t *testing.T) {
	a := startAPI(t, "", "")
	peer := st.NewNode(t, "recipient").Peer.String()
	ok := b64([]byte("fine"))
	unknownID := strings.Repeat("ab", 32)
	huge := strings.Repeat("A", base64.StdEncoding.EncodedLen(sidecar.MaxMessageBytes)+8<<10)
	tooLarge := b64(make([]byte, sidecar.MaxMessageBytes+1))
	cases := []struct {
		name, method, path, body string
		header                   map[string]string
		status                   int
		want                     string // in the error text
	}{
		{"invalid JSON", "POST", "/v1/messages", `{"recipient": `, nil, 400, "invalid JSON"},
		{"not JSON", "POST", "/v1/messages", `recipient=x`, nil, 400, "invalid JSON"},
		{"empty body", "POST", "/v1/messages", ``, nil, 400, "body: empty"},
		{"array", "POST", "/v1/messages", `[]`, nil, 400, "must be a JSON object, not array"},
		{"two values", "POST", "/v1/messages", postBody(peer, ok) + `{}`, nil, 400, "more than one JSON value"},
		{"recipient a number", "POST", "/v1/messages", `{"recipient": 5, "ciphertext": "` + ok + `"}`, nil, 400, "recipient must be a string, not number"},
		{"ciphertext a bool", "POST", "/v1/messages", `{"recipient": "` + peer + `", "ciphertext": true}`, nil, 400, "ciphertext must be a string, not bool"},
		{"unknown field", "POST", "/v1/messages", `{"recipient": "` + peer + `", "ciphertext": "` + ok + `", "priority": 1}`, nil, 400, `unknown field "priority"`},
		{"missing recipient", "POST", "/v1/messages", `{"ciphertext": "` + ok + `"}`, nil, 400, "recipient: missing"},
		{"empty recipient", "POST", "/v1/messages", postBody("", ok), nil, 400, "recipient: empty"},
		{"missing ciphertext", "POST", "/v1/messages", `{"recipient": "` + peer + `"}`, nil, 400, "ciphertext: missing"},
		{"empty ciphertext", "POST", "/v1/messages", postBody(peer, ""), nil, 400, "ciphertext: empty"},
		{"bad base64", "POST", "/v1/messages", postBody(peer, "not base64!"), nil, 400, "ciphertext: not standard padded base64"},
		{"unpadded base64", "POST", "/v1/messages", postBody(peer, "Zm9vYg"), nil, 400, "ciphertext: not standard padded base64"},
		{"bad peer ID", "POST", "/v1/messages", postBody("QmNotAPeerID", ok), nil, 400, "recipient:"},
		{"ciphertext over the limit", "POST", "/v1/messages", postBody(peer, tooLarge), nil, 413, fmt.Sprintf("ciphertext is %d bytes", sidecar.MaxMessageBytes+1)},
		{"body over the limit", "POST", "/v1/messages", postBody(peer, huge), nil, 413, "body is over"},
		{"bad id", "GET", "/v1/messages/xyz", "", nil, 400, "id: not a message ID"},
		{"upper-case id", "GET", "/v1/messages/" + strings.ToUpper(unknownID), "", nil, 400, "id: not a message ID"},
		{"unknown id", "GET", "/v1/messages/" + unknownID, "", nil, 404, "no message with id " + unknownID},
		{"bad wait", "GET", "/v1/inbox?wait=soon", "", nil, 400, "wait:"},
		{"negative wait", "GET", "/v1/inbox?wait=-1s", "", nil, 400, "wait:"},
		{"wait too long", "GET", "/v1/inbox?wait=2h", "", nil, 400, "wait:"},
		{"bad limit", "GET", "/v1/inbox?limit=many", "", nil, 400, "limit:"},
		{"zero limit", "GET", "/v1/inbox?limit=0", "", nil, 400, "limit:"},
		{"limit too high", "GET", "/v1/inbox?limit=100000", "", nil, 400, "limit:"},
		{"bad ack id", "POST", "/v1/inbox/xyz/ack", "", nil, 400, "id: not a message ID"},
		{"unknown ack id", "POST", "/v1/inbox/" + unknownID + "/ack", "", nil, 404, "no inbound message with id"},
		{"unknown route", "GET", "/v2/messages", "", nil, 404, "no such endpoint: GET /v2/messages"},
		{"wrong method", "DELETE", "/v1/messages/" + unknownID, "", nil, 404, "no such endpoint: DELETE"},
		{"cross-origin", "POST", "/v1/messages", postBody(peer, ok), map[string]string{"Origin": "https://evil.example"}, 403, "cross-origin"},
		{"origin null", "GET", "/v1/status", "", map[string]string{"Origin": "null"}, 403, "cross-origin"},
		{"DNS rebinding", "GET", "/v1/status", "", map[string]string{"Host": "evil.example:4100", "Origin": "http://evil.example:4100"}, 403, "not a loopback address"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := a.do(tc.method, tc.path, tc.body, tc.header)
			if r.status != tc.status {
				t.Errorf("status %d, want %d; body %.300s", r.status, tc.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			v := r.json(t)
			msg, _ := v["error"].(string)
			if len(v) != 1 || !strings.Contains(msg, tc.want) {
				t.Errorf("answer %.300s, want {\"error\": …%s…}", r.body, tc.want)
			}
		})
	}
	// Nothing bad was stored.
	stat, err := a.s.E.Status(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for s, n := range stat.Outbox {
		if n != 0 {
			t.Errorf("outbox holds %d %s messages after bad input only", n, s)
		}
	}
}

func TestTokenAndOrigin(t *testing.T) {
	const token = "0123456789abcdef-test"
	a := startAPI(t, token, "")
	bearer := map[string]string{"Authorization": "Bearer " + token}
	for _, tc := range []struct {
		name   string
		path   string
		header map[string]string
		status int
	}{
		{"no token", "/v1/status", nil, 401},
		{"wrong token", "/v1/status", map[string]string{"Authorization": "Bearer wrong-token-wrong-token"}, 401},
		{"not bearer", "/v1/status", map[string]string{"Authorization": "Basic " + token}, 401},
		{"no token on the status page", "/", nil, 401},
		{"no token on metrics", "/metrics", nil, 401},
		{"token", "/v1/status", bearer, 200},
		{"healthz needs none", "/healthz", nil, 200},
		{"same origin", "/v1/status", map[string]string{"Authorization": "Bearer " + token, "Origin": a.url}, 200},
		{"cross-origin with the token", "/v1/status", map[string]string{"Authorization": "Bearer " + token, "Origin": "http://evil.example"}, 403},
		// With a token, the API may listen beyond loopback: any Host.
		{"token, other host", "/v1/status", map[string]string{"Authorization": "Bearer " + token, "Host": "courier.internal:4100"}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := a.do("GET", tc.path, "", tc.header)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			if tc.status == 401 {
				if r.json(t)["error"] == nil || r.header.Get("WWW-Authenticate") == "" {
					t.Errorf("401 without a JSON error or WWW-Authenticate: %s", r.body)
				}
			}
		})
	}
}

// The node polls: a long poll returns as soon as a message arrives, and an
// ack takes it out of the inbox.
func TestInboxLongPollAndAck(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	b := startAPI(t, "", r.URL())
	sender := st.NewNode(t, "sender")
	sa := st.StartSidecar(t, sender, st.Config(sender, r.URL(), t.TempDir()), st.Options())
	sa.WaitRelay(sidecar.RelayConnected)
	b.s.WaitRelay(sidecar.RelayConnected)

	// Empty inbox: a short wait returns empty.
	start := time.Now()
	resp := b.do("GET", "/v1/inbox?wait=100ms", "", nil)
	if resp.status != 200 || string(bytes.TrimSpace(resp.body)) != `{"messages":[]}` || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("empty long poll = %d %s after %s", resp.status, resp.body, time.Since(start))
	}

	type inbox struct {
		Messages []struct {
			ID         string    `json:"id"`
			Ciphertext []byte    `json:"ciphertext"`
			Path       string    `json:"path"`
			ReceivedAt time.Time `json:"received_at"`
		} `json:"messages"`
	}
	polled := make(chan response, 1)
	go func() { polled <- b.do("GET", "/v1/inbox?wait=30s", "", nil) }()
	// The poll is waiting in the server, not answered early.
	st.Eventually(t, "the long poll to wait in the server", func() bool { return b.srv.LongPolls() == 1 })
	select {
	case r := <-polled:
		t.Fatalf("long poll answered before any message: %d %s", r.status, r.body)
	case <-time.After(200 * time.Millisecond): // more time only makes an early answer likelier to show
	}
	ct := st.Ciphertext("polled", 1, 500)
	id := sa.Submit(b.node, ct)
	var got inbox
	select {
	case r := <-polled:
		if r.status != 200 {
			t.Fatalf("long poll = %d %s", r.status, r.body)
		}
		if err := json.Unmarshal(r.body, &got); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll did not return when the message arrived")
	}
	if len(got.Messages) != 1 || got.Messages[0].ID != id || !bytes.Equal(got.Messages[0].Ciphertext, ct) ||
		got.Messages[0].Path != "INDIRECT" || got.Messages[0].ReceivedAt.IsZero() {
		t.Fatalf("inbox = %+v, want %s", got, id)
	}
	sa.WaitMessage(id, queue.Delivered) // acked to the relay once durable, before the node acks

	// Until acked, it stays.
	if r := b.do("GET", "/v1/inbox", "", nil); !strings.Contains(string(r.body), id) {
		t.Errorf("before the ack the inbox is %s", r.body)
	}
	for range 2 { // an ack is idempotent
		r := b.do("POST", "/v1/inbox/"+id+"/ack", "", nil)
		if v := r.json(t); r.status != 200 || v["id"] != id || v["acked"] != true {
			t.Errorf("ack = %d %s", r.status, r.body)
		}
	}
	if r := b.do("GET", "/v1/inbox", "", nil); string(bytes.TrimSpace(r.body)) != `{"messages":[]}` {
		t.Errorf("after the ack the inbox is %s", r.body)
	}

	// At shutdown a waiting long poll is answered at once.
	go func() { polled <- b.do("GET", "/v1/inbox?wait=30s", "", nil) }()
	st.Eventually(t, "the long poll to wait in the server", func() bool { return b.srv.LongPolls() == 1 })
	select {
	case r := <-polled:
		t.Fatalf("long poll answered early: %d %s", r.status, r.body)
	default:
	}
	b.srv.EndLongPolls()
	select {
	case r := <-polled:
		if r.status != http.StatusServiceUnavailable || !strings.Contains(r.json(t)["error"].(string), "shutting down") {
			t.Errorf("long poll at shutdown = %d %s", r.status, r.body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("EndLongPolls did not end the long poll")
	}
}

func TestHealthReadyMetricsStatus(t *testing.T) {
	a := startAPI(t, "", "")
	to := st.NewNode(t, "recipient")
	id := a.s.Submit(to, []byte("counted"))
	a.s.WaitMessage(id, queue.HandedOff)

	if r := a.do("GET", "/healthz", "", nil); r.status != 200 || r.json(t)["status"] != "ok" {
		t.Errorf("healthz = %d %s", r.status, r.body)
	}
	if r := a.do("GET", "/readyz", "", nil); r.status != 200 || r.json(t)["status"] != "ready" {
		t.Errorf("readyz = %d %s", r.status, r.body)
	}
	r := a.do("GET", "/metrics", "", nil)
	for _, want := range []string{
		"courier_messages_accepted_total 1",
		`courier_deliveries_total{path="OFFLINE"} 1`,
		`courier_outbox_messages{path="OFFLINE",state="handed_off"} 1`,
		`courier_relay_state{state="disabled"} 1`,
	} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	r = a.do("GET", "/v1/status", "", nil)
	var stat struct {
		Relay struct {
			State    string    `json:"state"`
			Since    time.Time `json:"since"`
			Identity string    `json:"identity"`
		} `json:"relay"`
		Outbox   map[string]int            `json:"outbox"`
		Inbox    map[string]int            `json:"inbox"`
		Paths    map[string]int            `json:"paths"`
		Node     map[string]map[string]any `json:"node"`
		LastHour map[string]struct {
			Delivered int     `json:"delivered"`
			P50Ms     float64 `json:"p50_ms"`
			P99Ms     float64 `json:"p99_ms"`
			PerMinute []int   `json:"per_minute"`
		} `json:"last_hour"`
		Attention []map[string]any `json:"attention"`
	}
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&stat); err != nil || r.status != 200 {
		t.Fatalf("status = %d %s: %v", r.status, r.body, err)
	}
	if stat.Relay.Identity != "peer" {
		t.Errorf("status relay identity = %q, want the default, peer", stat.Relay.Identity)
	}
	if stat.Relay.State != "disabled" || stat.Relay.Since.IsZero() || stat.Outbox["handed_off"] != 1 || stat.Outbox["queued"] != 0 ||
		stat.Paths["OFFLINE"] != 1 || stat.Paths["INDIRECT"] != 0 || stat.Inbox["pending"] != 0 || stat.Node["offline"]["consecutive_failures"] != 0.0 {
		t.Errorf("status = %s", r.body)
	}
	if off := stat.LastHour["OFFLINE"]; off.Delivered != 1 || off.P50Ms <= 0 || off.P99Ms < off.P50Ms || len(off.PerMinute) != 60 ||
		stat.LastHour["INDIRECT"].Delivered != 0 || stat.Attention == nil || len(stat.Attention) != 0 {
		t.Errorf("status last hour / attention = %s", r.body)
	}
	for _, s := range []string{"queued", "sending", "delivered", "handed_off", "failed"} {
		if _, ok := stat.Outbox[s]; !ok {
			t.Errorf("status outbox lacks %q: %s", s, r.body)
		}
	}

	r = a.do("GET", "/", "", nil)
	page := string(r.body)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") ||
		!strings.Contains(page, "<title>courier: disabled</title>") || !strings.Contains(page, id[:12]) || !strings.Contains(page, ">ready<") {
		t.Errorf("status page = %d %s", r.status, page)
	}
}

// With the relay unreachable past the grace the sidecar is not ready, and
// says why.
func TestNotReadyWithoutRelay(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	url := r.URL()
	r.Stop()
	a := startAPI(t, "", url)
	var resp response
	st.Eventually(t, "readyz to be 503", func() bool {
		resp = a.do("GET", "/readyz", "", nil)
		return resp.status == http.StatusServiceUnavailable
	})
	if msg, _ := resp.json(t)["error"].(string); !strings.Contains(msg, "relay") {
		t.Errorf("readyz error = %q, want the relay named", msg)
	}
	page := string(a.do("GET", "/", "", nil).body)
	if !strings.Contains(page, "NOT READY") || !(strings.Contains(page, "connecting") || strings.Contains(page, "disconnected")) {
		t.Errorf("status page does not show the relay state: %s", page)
	}
}

// The Origin check compares the whole origin: a page served from another
// loopback port, another scheme or another host name must not drive the
// API, even without a token. No Origin at all (the node, curl) is fine.
func TestOriginFull(t *testing.T) {
	a := startAPI(t, "", "")
	hostport := strings.TrimPrefix(a.url, "http://") // 127.0.0.1:port
	_, port, _ := strings.Cut(hostport, ":")
	other := "1"
	if port == "1" {
		other = "2"
	}
	peer := st.NewNode(t, "recipient").Peer.String()
	for i, tc := range []struct {
		name   string
		origin string // "" sends none
		host   string // "" keeps the real one
		status int
	}{
		{"no Origin (the node itself)", "", "", 202},
		{"same origin", "http://" + hostport, "", 202},
		{"same origin, upper-case scheme and trailing slash", "HTTP://" + hostport + "/", "", 202},
		{"another loopback port", "http://127.0.0.1:" + other, "", 403},
		{"no port: port 80", "http://127.0.0.1", "", 403},
		{"https, same host and port", "https://" + hostport, "", 403},
		{"another loopback host name", "http://localhost:" + port, "", 403},
		{"another host", "http://evil.example:" + port, "", 403},
		{"a path is not an origin", "http://" + hostport + "/x", "", 403},
		{"userinfo", "http://u@" + hostport, "", 403},
		{"null", "null", "", 403},
		{"garbage", "::::", "", 403},
		{"default port given both ways", "http://localhost:80", "localhost", 202},
		{"default port, other scheme", "https://localhost", "localhost", 403},
		{"IPv6 loopback, other port", "http://[::1]:" + other, "[::1]:" + port, 403},
		{"IPv6 loopback, same", "http://[::1]:" + port, "[::1]:" + port, 202},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{}
			if tc.origin != "" {
				h["Origin"] = tc.origin
			}
			if tc.host != "" {
				h["Host"] = tc.host
			}
			ct := []byte(fmt.Sprintf("origin case %d", i))
			r := a.do("POST", "/v1/messages", postBody(peer, b64(ct)), h)
			if r.status != tc.status {
				t.Fatalf("Origin %q, Host %q: status %d, want %d: %s", tc.origin, tc.host, r.status, tc.status, r.body)
			}
			if tc.status == 403 && !strings.Contains(r.json(t)["error"].(string), "cross-origin") {
				t.Errorf("403 without saying why: %s", r.body)
			}
		})
	}
}
