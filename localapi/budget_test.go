package localapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"

	st "courier/sidecar/sidecartest"
)

// The bytes of bodies read at once are budgeted across requests: with
// room for one body of unknown length, a second request waits until the
// first is done, and one whose client gives up while waiting leaves
// nothing behind.
func TestBodyBudget(t *testing.T) {
	n := st.NewNode(t, "budget")
	cfg := st.Config(n, "", t.TempDir())
	s := st.StartSidecar(t, n, cfg, st.Options())
	srv := New(s.E, "", st.Logger())
	srv.bodies = semaphore.NewWeighted(bodyLimit(s.E.MaxMessageBytes()))
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	peer := st.NewNode(t, "recipient").Peer.String()
	body := func(i int) string {
		b, _ := json.Marshal(map[string]string{"recipient": peer, "ciphertext": fmt.Sprintf("%08d", i)})
		return string(b)
	}

	// A: chunked (unknown length: it reserves the whole budget), held open.
	pr, pw := io.Pipe()
	aDone := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", hs.URL+"/v1/messages", pr)
		req.ContentLength = -1
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			aDone <- 0
			return
		}
		resp.Body.Close()
		aDone <- resp.StatusCode
	}()
	if _, err := io.WriteString(pw, body(1)[:10]); err != nil {
		t.Fatal(err)
	}
	// The write returns once the client has sent it, maybe before A's
	// handler runs: wait until A's handler holds the whole budget.
	st.Eventually(t, "A's handler to hold the budget", func() bool {
		if srv.bodies.TryAcquire(1) {
			srv.bodies.Release(1)
			return false
		}
		return true
	})

	// B gives up while waiting.
	ctx, cancel := context.WithCancel(context.Background())
	bDone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", hs.URL+"/v1/messages", strings.NewReader(body(2)))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %d while the budget was taken", resp.StatusCode)
		}
		bDone <- err
	}()
	// C waits; it must not be answered before A's body is complete.
	var aClosed atomic.Bool
	cDone := make(chan string, 1)
	go func() {
		resp, err := http.Post(hs.URL+"/v1/messages", "application/json", strings.NewReader(body(3)))
		if err != nil {
			cDone <- err.Error()
			return
		}
		resp.Body.Close()
		cDone <- fmt.Sprintf("%d after A closed: %v", resp.StatusCode, aClosed.Load())
	}()
	time.Sleep(300 * time.Millisecond) // room for B and C to be answered, were the budget not kept
	cancel()
	if err := <-bDone; err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("B, cancelled while waiting: %v", err)
	}
	aClosed.Store(true)
	if _, err := io.WriteString(pw, body(1)[10:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if code := <-aDone; code != http.StatusAccepted {
		t.Errorf("A = %d, want 202", code)
	}
	select {
	case got := <-cDone:
		if got != "202 after A closed: true" {
			t.Errorf("C: %s, want 202 once A was done", got)
		}
	case <-time.After(st.WaitTimeout):
		t.Fatal("C was never served")
	}
	// Nothing left reserved: the whole budget is free again (the last
	// handler releases just after its answer is written).
	st.Eventually(t, "the whole budget to be free", func() bool { return srv.bodies.TryAcquire(bodyLimit(s.E.MaxMessageBytes())) })
}
