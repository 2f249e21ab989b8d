package upstream_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"courier/upstream"
	"courier/wire"
)

// floodingRelay accepts a level-1 subscribe, then writes up to frames
// valid delivery frames of size bytes each, as fast as the client reads
// them. It stops at the first write that has not gone through within
// stall (the client stopped reading) and reports how many went through.
func floodingRelay(t *testing.T, frames, size int, stall time.Duration) (url string, written <-chan int) {
	out := make(chan int, 1)
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		c, err := websocket.Accept(w, req, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(req.Context(), waitTimeout)
		defer cancel()
		if _, _, err := c.Read(ctx); err != nil {
			return
		}
		if err := c.Write(ctx, websocket.MessageText, wire.SubscribeOK); err != nil {
			return
		}
		go func() { // acks must be read for the client's writes to go through
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					return
				}
			}
		}()
		ct := make([]byte, size)
		n := 0
		for ; n < frames; n++ {
			binary.BigEndian.PutUint64(ct, uint64(n)) // a new message each time
			wctx, wcancel := context.WithTimeout(ctx, stall)
			err := c.Write(wctx, websocket.MessageText, wire.DeliveryFrame(wire.MessageID(ct), ct))
			wcancel()
			if err != nil {
				break
			}
		}
		once.Do(func() { out <- n })
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/", out
}

// A relay (or peers flooding a shared subscription key) that pushes
// messages faster than the node takes them cannot make the client hold
// more than MaxInboundBytes of them: the reader stops reading and the
// relay's writes stall, instead of the client buffering 1,024 messages
// plus a batch of 256 whatever their size (up to 20 GiB at 16 MiB each).
// Handle's batches stay within the bound too.
func TestInboundBoundedInBytes(t *testing.T) {
	const (
		size   = 64 << 10
		budget = 1 << 20 // 16 messages
		frames = 2000    // 125 MiB, if the client read them all
	)
	url, written := floodingRelay(t, frames, size, 2*time.Second)
	release := make(chan struct{})
	var (
		calls     atomic.Int32
		maxHeld   atomic.Int64
		batchSize = func(b []upstream.Inbound) (n int64) {
			for _, m := range b {
				n += int64(len(m.Ciphertext))
			}
			return n
		}
	)
	a := newNode(1)
	a.client(t, url, func(c *upstream.Config) {
		c.Anonymous, c.UserID = true, anonUserID
		c.MaxInboundBytes = budget
		c.PingInterval = time.Hour // the blocked reader answers no pong; not what is tested here
		c.Handle = func(ctx context.Context, batch []upstream.Inbound) error {
			if n := batchSize(batch); n > maxHeld.Load() {
				maxHeld.Store(n)
			}
			if calls.Add(1) == 1 {
				select { // the node is slow: the first batch waits
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		}
	})
	var n int
	select {
	case n = <-written:
	case <-time.After(waitTimeout):
		t.Fatal("the flooding relay's writes never stalled")
	}
	close(release)
	// The client holds at most budget bytes; the rest sits in socket
	// buffers (a few MiB on loopback) and coder/websocket's reader.
	if limit := budget/size + (16<<20)/size; n > limit {
		t.Errorf("the relay wrote %d frames of %d bytes (%d MiB) while Handle was blocked; want at most %d", n, size, n*size>>20, limit)
	}
	if m := maxHeld.Load(); m > budget {
		t.Errorf("a batch of %d bytes, want at most %d", m, budget)
	}
	t.Logf("the relay wrote %d frames (%d MiB) before stalling; largest batch %d bytes", n, n*size>>20, maxHeld.Load())
}

// A relay that refuses the subscribe with a megabyte of error text: the
// status (shown on /v1/status and the status page) quotes at most a few
// hundred bytes of it.
func TestHugeRelayErrorClipped(t *testing.T) {
	url, subs := hostileRelay(t, "over_quota: "+strings.Repeat("é", 1<<19))
	a := newNode(1)
	_, states := a.client(t, url, func(c *upstream.Config) { c.Anonymous, c.UserID = true, anonUserID })
	deadline := time.After(waitTimeout)
	for {
		select {
		case s := <-states:
			if s.LastError == "" {
				continue
			}
			if len(s.LastError) > 1024 || !strings.Contains(s.LastError, "over_quota: éé") {
				t.Fatalf("last error of %d bytes (%.80q…), want the reason's start, at most 1 KiB", len(s.LastError), s.LastError)
			}
			if subs.Load() >= 1 {
				return
			}
		case <-deadline:
			t.Fatal("no status with the relay's error")
		}
	}
}

// countingHandler counts log records at warn and above, and their bytes.
type countingHandler struct {
	mu    sync.Mutex
	warns int
	bytes int
}

func (h *countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	var b bytes.Buffer
	_ = slog.NewTextHandler(&b, nil).Handle(context.Background(), r)
	h.mu.Lock()
	h.warns++
	h.bytes += b.Len()
	h.mu.Unlock()
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// A relay that answers a level-1 subscribe and then floods the session
// with junk: thousands of {"error": …} frames with long reasons,
// deliveries whose ID is not the hash of their ciphertext (with a long
// ID), level-2 frames a level-1 session never asked for (PublishResult,
// Drained, a second {"subscribe": true}), and then one good delivery.
// The good one is taken and acked, no junk is taken, every error reaches
// OnRelayError (clipped), and the log gets a few lines, not thousands of
// kilobyte-long ones.
func TestLevel1JunkFlood(t *testing.T) {
	const junk = 3000
	good := []byte("the one good message")
	acked := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		c, err := websocket.Accept(w, req, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(req.Context(), waitTimeout)
		defer cancel()
		if _, _, err := c.Read(ctx); err != nil {
			return
		}
		long := strings.Repeat("z", 4096)
		frames := [][]byte{wire.SubscribeOK}
		for i := range junk {
			switch i % 5 {
			case 0:
				frames = append(frames, wire.ErrorFrame("rate_limited: "+long))
			case 1:
				frames = append(frames, wire.DeliveryFrame(long, []byte("not that")))
			case 2:
				frames = append(frames, wire.PublishResultFrame(wire.PublishResult{ID: long, Ref: "1", Status: wire.StatusDelivered}))
			case 3:
				frames = append(frames, wire.DrainedFrame(i))
			case 4:
				frames = append(frames, wire.SubscribeOK)
			}
		}
		frames = append(frames, wire.DeliveryFrame(wire.MessageID(good), good))
		for _, f := range frames {
			if err := c.Write(ctx, websocket.MessageText, f); err != nil {
				return
			}
		}
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				return
			}
			if f, err := wire.ParseClientFrame(b); err == nil && f.Type == wire.TypeAck {
				acked <- f.Ack.MessageID
				<-ctx.Done()
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	var (
		errs    atomic.Int32
		longest atomic.Int32
	)
	h := &countingHandler{}
	a := newNode(1)
	a.client(t, "ws"+strings.TrimPrefix(srv.URL, "http")+"/", func(c *upstream.Config) {
		c.Anonymous, c.UserID = true, anonUserID
		c.Logger = slog.New(h)
		c.OnRelayError = func(reason string) {
			errs.Add(1)
			if int32(len(reason)) > longest.Load() {
				longest.Store(int32(len(reason)))
			}
		}
	})
	select {
	case id := <-acked:
		if id != wire.MessageID(good) {
			t.Errorf("acked %s, want the good message", id)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the good message behind the junk was not acked")
	}
	if m := waitMessage(t, a); string(m.Ciphertext) != string(good) {
		t.Errorf("handled %q, want the good message", m.Ciphertext)
	}
	select {
	case m := <-a.handled:
		t.Errorf("junk handled: %.40q", m.ID)
	default:
	}
	if n := errs.Load(); n != junk/5 {
		t.Errorf("OnRelayError called %d times, want %d", n, junk/5)
	}
	if l := longest.Load(); l > 1024 {
		t.Errorf("OnRelayError got a reason of %d bytes, want it clipped", l)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.warns > 20 || h.bytes > 20<<10 {
		t.Errorf("%d warnings, %d bytes of log for %d junk frames; want a few short lines", h.warns, h.bytes, junk)
	}
}

// A relay that sends a frame over the client's read limit: the client
// drops the connection with an error saying so (it does not read the
// frame into memory), and reconnects with its backoff.
func TestOversizedFrameDropsConnection(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		c, err := websocket.Accept(w, req, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		conns.Add(1)
		ctx, cancel := context.WithTimeout(req.Context(), waitTimeout)
		defer cancel()
		if _, _, err := c.Read(ctx); err != nil {
			return
		}
		if c.Write(ctx, websocket.MessageText, wire.SubscribeOK) != nil {
			return
		}
		ct := bytes.Repeat([]byte{7}, 4<<20)
		_ = c.Write(ctx, websocket.MessageText, wire.DeliveryFrame(wire.MessageID(ct), ct))
		_, _, _ = c.Read(ctx) // until the client goes
	}))
	t.Cleanup(srv.Close)
	a := newNode(1)
	_, states := a.client(t, "ws"+strings.TrimPrefix(srv.URL, "http")+"/", func(c *upstream.Config) {
		c.Anonymous, c.UserID = true, anonUserID
		c.MaxFrameBytes = 1 << 20
	})
	var last upstream.Status
	deadline := time.After(waitTimeout)
	for conns.Load() < 3 || !strings.Contains(last.LastError, "read limited") {
		select {
		case last = <-states:
		case <-deadline:
			t.Fatalf("after %d connections, last status %+v; want the read limit named and retries", conns.Load(), last)
		}
	}
	select {
	case m := <-a.handled:
		t.Errorf("the oversized message was handled: %.16s", m.ID)
	default:
	}
}
