package upstream_test

import (
	"context"
	"encoding/binary"
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
