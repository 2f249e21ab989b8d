package relaytest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
)

// Front is a capturing front for the relay: a WebSocket-level proxy that
// takes a client's connection, opens one to the relay for it, passes the
// frames both ways, and records every message in each direction and every
// HTTP request the client makes (headers included), so that a test can check what
// the relay could have learned from that client. Plain HTTP (the relay's
// description at GET /) is passed on unless NoDescription was set.
type Front struct {
	t      testing.TB
	relay  *Relay
	srv    *httptest.Server
	noDesc bool

	mu       sync.Mutex
	frames   [][]byte      // client → relay messages, in order
	received [][]byte      // relay → client messages, in order
	requests []http.Header // every request's headers, with "Path" and "Query" added
	conns    map[*websocket.Conn]bool
	wg       sync.WaitGroup
}

// StartFront starts a capturing front for r on 127.0.0.1. With
// noDescription it answers 404 to everything but WebSocket upgrades, so
// that a client cannot read the relay's limits. It stops when the test
// ends.
func StartFront(t testing.TB, r *Relay, noDescription bool) *Front {
	t.Helper()
	f := &Front{t: t, relay: r, noDesc: noDescription, conns: make(map[*websocket.Conn]bool)}
	target, err := url.Parse("http://" + r.Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		h := req.Header.Clone()
		h.Set("Path", req.URL.Path)
		h.Set("Query", req.URL.RawQuery)
		f.mu.Lock()
		f.requests = append(f.requests, h)
		f.mu.Unlock()
		if !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
			if f.noDesc {
				http.NotFound(w, req)
				return
			}
			rp.ServeHTTP(w, req)
			return
		}
		f.serveWS(w, req)
	}))
	t.Cleanup(f.Close)
	return f
}

// URL is the front's WebSocket URL, for relay_url.
func (f *Front) URL() string { return "ws" + strings.TrimPrefix(f.srv.URL, "http") + "/" }

// Frames returns every message the clients sent towards the relay so far.
func (f *Front) Frames() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.frames...)
}

// FramesFromRelay returns every message the relay sent to the clients so
// far.
func (f *Front) FramesFromRelay() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.received...)
}

// Requests returns the headers of every HTTP request so far, with the
// request's path and query added as "Path" and "Query".
func (f *Front) Requests() []http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]http.Header(nil), f.requests...)
}

// Close stops the front, closing every connection through it.
func (f *Front) Close() {
	f.srv.CloseClientConnections()
	f.mu.Lock()
	for c := range f.conns {
		c.CloseNow()
	}
	f.mu.Unlock()
	f.srv.Close()
	f.wg.Wait()
}

func (f *Front) serveWS(w http.ResponseWriter, req *http.Request) {
	f.wg.Add(1)
	defer f.wg.Done()
	client, err := websocket.Accept(w, req, nil)
	if err != nil {
		return
	}
	defer client.CloseNow()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up, _, err := websocket.Dial(ctx, "ws://"+f.relay.Addr+"/", nil)
	if err != nil {
		client.Close(websocket.StatusTryAgainLater, "relay unreachable")
		return
	}
	defer up.CloseNow()
	client.SetReadLimit(-1)
	up.SetReadLimit(-1)
	f.mu.Lock()
	f.conns[client], f.conns[up] = true, true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.conns, client)
		delete(f.conns, up)
		f.mu.Unlock()
	}()
	// pump copies messages from src to dst until either fails, then closes
	// dst with src's close code (or 1011 when src just went away).
	pump := func(dst, src *websocket.Conn, record *[][]byte) {
		defer cancel()
		for {
			typ, b, err := src.Read(ctx)
			if err != nil {
				code := websocket.CloseStatus(err)
				if code == -1 || code == websocket.StatusNoStatusRcvd || code == websocket.StatusAbnormalClosure {
					code = websocket.StatusInternalError
				}
				dst.Close(code, "front: the other side closed")
				return
			}
			f.mu.Lock()
			*record = append(*record, b)
			f.mu.Unlock()
			if err := dst.Write(ctx, typ, b); err != nil {
				return
			}
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pump(client, up, &f.received)
	}()
	pump(up, client, &f.frames)
	<-done
}
