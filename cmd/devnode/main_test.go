package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"courier/devnode"
	"courier/wire"
)

// fields parses a "k=v k=v" line.
func fields(line string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		out[k] = v
	}
	return out
}

// startServe runs "devnode serve" until the test ends and returns its
// first stdout line, parsed, and a func that stops it and returns run's error.
func startServe(t *testing.T, args ...string) (map[string]string, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, append([]string{"serve", "-listen", "127.0.0.1:0"}, args...), pw, io.Discard)
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		cancel()
		t.Fatalf("no start line: %v (run: %v)", err, <-done)
	}
	go io.Copy(io.Discard, pr)
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("devnode did not shut down")
			}
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	return fields(line), stop
}

func TestServe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.json")
	got, stop := startServe(t, "-identity", path)
	if !strings.HasPrefix(got["peer_id"], "Qm") || got["pubkey"] == "" || got["listen"] == "" {
		t.Fatalf("start line %v", got)
	}
	base := "http://" + got["listen"]
	var id map[string]string
	resp, err := http.Get(base + "/devnode/id")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&id)
	resp.Body.Close()
	if id["peer_id"] != got["peer_id"] || id["pubkey"] != got["pubkey"] {
		t.Errorf("/devnode/id = %v, start line %v", id, got)
	}
	if err := stop(); err != nil {
		t.Fatalf("run = %v", err)
	}

	again, _ := startServe(t, "-identity", path)
	if again["peer_id"] != got["peer_id"] {
		t.Errorf("restart with the same identity: %s, first %s", again["peer_id"], got["peer_id"])
	}
}

// A long poll in flight must not hold up the shutdown.
func TestCloseEndsLongPolls(t *testing.T) {
	m := NewMain(io.Discard)
	if err := m.ParseFlags([]string{"-listen", "127.0.0.1:0"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	active := make(chan struct{})
	var once sync.Once
	m.Wrap = func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			once.Do(func() { close(active) }) // the long poll is in its handler
			h.ServeHTTP(w, r)
		})
	}
	if err := m.Open(); err != nil {
		t.Fatal(err)
	}
	polled := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + m.Addr() + "/devnode/received?min=1&wait=60s")
		if err != nil {
			t.Error(err)
			polled <- 0
			return
		}
		resp.Body.Close()
		polled <- resp.StatusCode
	}()
	<-active
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if status := <-polled; status != http.StatusOK {
		t.Errorf("long poll answered %d, want 200 with what there is", status)
	}
	if err := m.Close(ctx); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestServeFailsAtOnce(t *testing.T) {
	occupied, stop := startServe(t)
	defer stop()
	tests := [][]string{
		{"-listen", occupied["listen"]},
		{"-identity", filepath.Join(t.TempDir(), "missing-dir", "id.json")},
		{"-sidecar", "localhost:4100"},
		{"-nope"},
		{"extra"},
		{"-offline-poll", "0s"},
		{"-offline-poll", "soon"},
	}
	for _, args := range tests {
		if err := run(context.Background(), append([]string{"serve"}, args...), io.Discard, io.Discard); err == nil {
			t.Errorf("serve %v succeeded", args)
		}
	}
}

// sidecar is the smallest sidecar local API: every message is delivered.
func sidecar(t *testing.T, posted *[]string) string {
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.Method == "POST" {
			var req struct{ Recipient, Ciphertext string }
			json.NewDecoder(r.Body).Decode(&req)
			ct, _ := base64.StdEncoding.DecodeString(req.Ciphertext)
			*posted = append(*posted, req.Recipient)
			w.WriteHeader(202)
			json.NewEncoder(w).Encode(map[string]string{"id": wire.MessageID(ct), "state": "queued"})
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"id": strings.TrimPrefix(r.URL.Path, "/v1/messages/"), "state": "delivered", "path": "INDIRECT"})
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestSendAndID(t *testing.T) {
	var posted []string
	got, _ := startServe(t, "-sidecar", sidecar(t, &posted))
	node := "http://" + got["listen"]

	path := filepath.Join(t.TempDir(), "bob.json")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"id", "-identity", path}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	bob := fields(out.String())
	if !strings.HasPrefix(bob["peer_id"], "Qm") || !strings.HasPrefix(bob["identity_peer_id"], "12D3Koo") {
		t.Fatalf("id: %q", out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"id", "-identity", path}, &out, io.Discard); err != nil || fields(out.String())["peer_id"] != bob["peer_id"] {
		t.Errorf("id again: %q, %v", out.String(), err)
	}

	tests := []struct {
		name      string
		args      []string
		wantState string
	}{
		{"Qm and key, waiting", []string{"-to", bob["peer_id"], "-to-pubkey", bob["pubkey"], "-text", "hi", "-wait", "5s"}, "delivered"},
		{"12D3Koo alone", []string{"-to", bob["identity_peer_id"], "-text", "hi"}, "queued"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := run(context.Background(), append([]string{"send", "-node", node}, tt.args...), &out, io.Discard); err != nil {
				t.Fatal(err)
			}
			res := fields(out.String())
			if res["state"] != tt.wantState || !wire.ValidMessageID(res["id"]) {
				t.Errorf("send printed %q", out.String())
			}
		})
	}
	if len(posted) != 2 {
		t.Errorf("sidecar got %d messages, want 2", len(posted))
	}

	// id printed the key of the file.
	priv, err := devnode.LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(wire.MarshalPublicKey(priv.Public().(ed25519.PublicKey))) != bob["pubkey"] {
		t.Error("id printed another key")
	}

	out.Reset()
	if err := run(context.Background(), []string{"id", "-node", node}, &out, io.Discard); err != nil || fields(out.String())["peer_id"] != got["peer_id"] {
		t.Errorf("id -node: %q, %v", out.String(), err)
	}
	for _, args := range [][]string{
		{"send", "-node", node, "-to", bob["peer_id"], "-text", "no key"},
		{"send", "-node", "http://127.0.0.1:1", "-to-pubkey", bob["pubkey"], "-text", "nobody there"},
		{"id"},
		{"id", "-identity", path, "-node", node},
		{"frobnicate"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("%v succeeded", args)
		}
	}
	out.Reset()
	if err := run(context.Background(), []string{"version"}, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "devnode ") {
		t.Errorf("version: %q %v", out.String(), err)
	}
	if err := run(context.Background(), []string{"send", "-h"}, io.Discard, io.Discard); err != nil {
		t.Errorf("-h: %v", err)
	}
}

// Two devnodes on one OFFLINE network, neither with a sidecar: what A's
// OFFLINE endpoint takes, B finds at one of its polls, opened and checked.
func TestServeOfflineNetwork(t *testing.T) {
	dir := t.TempDir()
	a, _ := startServe(t, "-offline-dir", dir)
	b, stopB := startServe(t, "-offline-dir", dir, "-offline-poll", "200ms")
	bPub, err := hex.DecodeString(b["pubkey"])
	if err != nil {
		t.Fatal(err)
	}
	pub, err := wire.UnmarshalPublicKey(bPub)
	if err != nil {
		t.Fatal(err)
	}
	sender := ed25519.NewKeyFromSeed(make([]byte, 32))
	ct, err := devnode.Seal(pub, sender, "over the DHT")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"recipient": b["peer_id"], "ciphertext": base64.StdEncoding.EncodeToString(ct)})
	resp, err := http.Post("http://"+a["listen"]+"/courier/offline", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("OFFLINE publish at A: %d", resp.StatusCode)
	}
	resp, err = http.Get("http://" + b["listen"] + "/devnode/received?min=1&wait=20s")
	if err != nil {
		t.Fatal(err)
	}
	var got struct{ Messages []devnode.Received }
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Messages) != 1 || got.Messages[0].Text != "over the DHT" || got.Messages[0].Path != "OFFLINE" ||
		got.Messages[0].Sender != devnode.PeerID(sender) || got.Messages[0].ID != wire.MessageID(ct) {
		t.Fatalf("B received %+v", got.Messages)
	}
	resp, err = http.Get("http://" + b["listen"] + "/devnode/offline-poll")
	if err != nil {
		t.Fatal(err)
	}
	var st devnode.OfflinePollStats
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.Taken != 1 || st.Interval != "200ms" || st.Dir != dir {
		t.Errorf("B's poll stats %+v", st)
	}
	if err := stopB(); err != nil {
		t.Errorf("B stops: %v", err)
	}
}
