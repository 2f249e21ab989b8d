package localapi_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"courier/localapi"
	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// endless yields 'A' (valid base64) without end, counting what was read.
type endless struct{ n atomic.Int64 }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'A'
	}
	e.n.Add(int64(len(p)))
	return len(p), nil
}

// Bodies too large for the sidecar's own limit are refused with 413 and a
// JSON error that says the limit and what to do, without reading more
// than the limit: told by Content-Length, at once; streamed without one,
// as soon as the limit is passed.
func TestOversizedBody(t *testing.T) {
	a := startAPI(t, "", "")
	peer := st.NewNode(t, "recipient").Peer.String()
	maxBody := int64(base64.StdEncoding.EncodedLen(sidecar.MaxMessageBytes)) + 4096

	check := func(t *testing.T, resp *http.Response) {
		t.Helper()
		defer resp.Body.Close()
		var v map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatalf("413 body is not JSON: %v", err)
		}
		msg := v["error"]
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(msg, fmt.Sprint(sidecar.MaxMessageBytes)) ||
			!strings.Contains(msg, "api.max_message_bytes") || !strings.Contains(msg, "OFFLINE") {
			t.Errorf("oversized body = %d %q, want 413 naming the limit and what to do", resp.StatusCode, msg)
		}
	}

	t.Run("declared length", func(t *testing.T) {
		body := &endless{}
		req, _ := http.NewRequest("POST", a.url+"/v1/messages", io.LimitReader(body, maxBody+1))
		req.ContentLength = maxBody + 1
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		check(t, resp)
	})
	t.Run("streamed", func(t *testing.T) {
		body := &endless{}
		prefix := strings.NewReader(`{"recipient":"` + peer + `","ciphertext":"`)
		req, _ := http.NewRequest("POST", a.url+"/v1/messages", io.MultiReader(prefix, body))
		req.ContentLength = -1 // chunked: the server learns the size only by reading
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		check(t, resp)
		// The client may have written ahead into socket buffers, but far
		// from without end.
		if n := body.n.Load(); n > maxBody+(16<<20) {
			t.Errorf("the client could write %d bytes of a body limited to %d", n, maxBody)
		}
	})
}

// Deeply nested JSON, wrong types and a null are 400s naming the field,
// answered at once.
func TestHostileJSON(t *testing.T) {
	a := startAPI(t, "", "")
	peer := st.NewNode(t, "recipient").Peer.String()
	deep := strings.Repeat("[", 200000) + strings.Repeat("]", 200000)
	deepObj := strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000)
	for _, tc := range []struct {
		name, body, want string
	}{
		{"nested arrays as recipient", `{"recipient":` + deep + `,"ciphertext":"AA=="}`, "recipient"},
		{"nested objects as ciphertext", `{"recipient":"` + peer + `","ciphertext":` + deepObj + `}`, "ciphertext"},
		{"nested array as the body", deep, "body:"},
		{"recipient null", `{"recipient":null,"ciphertext":"AA=="}`, "recipient: missing"},
		{"ciphertext an object", `{"recipient":"` + peer + `","ciphertext":{}}`, "ciphertext must be a string, not object"},
		{"ciphertext a number", `{"recipient":"` + peer + `","ciphertext":12}`, "ciphertext must be a string, not number"},
		{"recipient an array", `{"recipient":["` + peer + `"],"ciphertext":"AA=="}`, "recipient must be a string, not array"},
		{"body a string", `"hello"`, "must be a JSON object, not string"},
		{"body a number", `1e999`, "body:"},
		{"duplicate key, second one wrong", `{"recipient":"` + peer + `","recipient":5,"ciphertext":"AA=="}`, "recipient must be a string"},
		{"invalid UTF-8 in recipient", "{\"recipient\":\"Qm\xff\xfe\",\"ciphertext\":\"AA==\"}", "recipient:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := a.do("POST", "/v1/messages", tc.body, nil)
			msg, _ := r.json(t)["error"].(string)
			if r.status != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
				t.Errorf("status %d, error %.200q; want 400 mentioning %q", r.status, msg, tc.want)
			}
		})
	}
}

// A body that stalls or trickles is cut off after BodyTimeout with 408,
// instead of holding the request open as long as the client likes.
func TestSlowBody(t *testing.T) {
	a := startAPIWith(t, "", "", func(s *localapi.Server) { s.BodyTimeout = 300 * time.Millisecond })
	host := strings.TrimPrefix(a.url, "http://")
	for _, tc := range []struct {
		name string
		send func(c net.Conn)
	}{
		{"stalls", func(c net.Conn) { fmt.Fprint(c, `{"recipient":`) }},
		{"trickles", func(c net.Conn) {
			for range 100 { // a byte every 50ms: 5s for the body
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "POST /v1/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n", host)
			answered := make(chan struct{})
			go func() {
				defer close(answered)
				tc.send(c)
			}()
			_ = c.SetReadDeadline(time.Now().Add(st.WaitTimeout))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer to a slow body: %v", err)
			}
			defer resp.Body.Close()
			var v map[string]string
			_ = json.NewDecoder(resp.Body).Decode(&v)
			if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(v["error"], "not received within 300ms") {
				t.Errorf("slow body = %d %q, want 408 saying the body was too slow", resp.StatusCode, v["error"])
			}
			c.Close()
			<-answered
		})
	}
	// The API still answers others.
	if r := a.do("GET", "/healthz", "", nil); r.status != 200 {
		t.Errorf("healthz after slow bodies = %d", r.status)
	}
}

// Defect 11: a message larger than the relay accepts is not the node's
// problem: it is accepted (202) and goes OFFLINE at once. Only a message
// over the sidecar's own limit (api.max_message_bytes, 16 MiB by default)
// is refused, with 413 naming that limit.
func TestLargerThanTheRelayTakes(t *testing.T) {
	r := st.StartRelay(t, nil, nil) // the relay's default limit, 4 MiB
	a := startAPI(t, "", r.URL())
	a.s.WaitRelay(sidecar.RelayConnected)
	to := st.NewNode(t, "recipient")
	big := st.Ciphertext("over the relay's limit", 1, r.Cfg.Limits.MaxMessageBytes+1)
	resp := a.do("POST", "/v1/messages", postBody(to.Peer.String(), b64(big)), nil)
	if resp.status != http.StatusAccepted {
		t.Fatalf("POST of %d bytes (relay limit %d) = %d %.300s, want 202", len(big), r.Cfg.Limits.MaxMessageBytes, resp.status, resp.body)
	}
	id := resp.json(t)["id"].(string)
	m := a.s.WaitMessage(id, queue.HandedOff)
	if m.Path != queue.PathOffline || !strings.Contains(m.LastError, "too_large") {
		t.Errorf("message = %s on %s, last error %q; want handed off OFFLINE because it is too large for the relay", m.State, m.Path, m.LastError)
	}
	if a.node.Offline.AcceptedIDs()[id] != 1 {
		t.Error("the node's OFFLINE endpoint did not get it")
	}

	over := b64(make([]byte, sidecar.MaxMessageBytes+1))
	resp = a.do("POST", "/v1/messages", postBody(to.Peer.String(), over), nil)
	if msg, _ := resp.json(t)["error"].(string); resp.status != http.StatusRequestEntityTooLarge || !strings.Contains(msg, fmt.Sprint(sidecar.MaxMessageBytes)) {
		t.Errorf("POST over the sidecar's own limit = %d %q, want 413 naming %d", resp.status, msg, sidecar.MaxMessageBytes)
	}
}

// A lower api.max_message_bytes is the limit the API enforces and names.
func TestConfiguredMessageLimit(t *testing.T) {
	n := st.NewNode(t, "small")
	cfg := st.Config(n, "", t.TempDir())
	cfg.API.MaxMessageBytes = 1 << 20
	s := st.StartSidecar(t, n, cfg, st.Options())
	hs := httptest.NewServer(localapi.New(s.E, "", st.Logger()))
	t.Cleanup(hs.Close)
	a := &api{t: t, url: hs.URL, s: s, node: n}
	peer := st.NewNode(t, "recipient").Peer.String()
	if r := a.do("POST", "/v1/messages", postBody(peer, b64(make([]byte, 1<<20))), nil); r.status != http.StatusAccepted {
		t.Errorf("POST at the configured limit = %d %.200s", r.status, r.body)
	}
	for name, body := range map[string]string{
		"ciphertext just over": postBody(peer, b64(make([]byte, 1<<20+1))),
		"body over":            postBody(peer, strings.Repeat("A", 2<<20)),
	} {
		r := a.do("POST", "/v1/messages", body, nil)
		if msg, _ := r.json(t)["error"].(string); r.status != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "1048576") {
			t.Errorf("%s = %d %q, want 413 naming 1048576", name, r.status, msg)
		}
	}
}
